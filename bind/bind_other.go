//go:build !linux

package bind

func bindToDevice(fd int, iface string) error { return ErrUnsupported }

// CheckInterface is not supported outside Linux.
func CheckInterface(name string) error { return &Error{Interface: name, Err: ErrUnsupported} }
