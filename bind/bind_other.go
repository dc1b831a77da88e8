//go:build !linux

package bind

func prepare(fd int, network string, d Dialer) error { return ErrUnsupported }

// CheckInterface is not supported outside Linux.
func CheckInterface(name string) error { return &Error{Interface: name, Err: ErrUnsupported} }
