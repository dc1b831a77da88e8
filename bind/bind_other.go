//go:build !linux

package bind

import "net/netip"

func prepare(fd int, network string, d Dialer) error { return ErrUnsupported }

// CheckInterface is not supported outside Linux.
func CheckInterface(name string) error { return &Error{Interface: name, Err: ErrUnsupported} }

// IsLocal is not supported outside Linux: no address is known local.
func IsLocal(a netip.Addr) bool { return false }
