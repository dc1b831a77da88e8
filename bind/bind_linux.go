package bind

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// validName refuses names the kernel would silently cut short: it reads
// an interface name only up to a NUL byte or IFNAMSIZ-1 bytes, so
// "eth1\x00x" or a 16-byte name would bind to some other interface.
func validName(iface string) bool {
	return iface != "" && len(iface) < unix.IFNAMSIZ && !strings.ContainsRune(iface, 0)
}

func bindToDevice(fd int, iface string) error {
	if !validName(iface) {
		return ErrNoInterface
	}
	err := unix.BindToDevice(fd, iface)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return ErrNoInterface
	case errors.Is(err, unix.EPERM):
		// Before Linux 5.7 SO_BINDTODEVICE needs CAP_NET_RAW.
		return fmt.Errorf("SO_BINDTODEVICE: %w (needs CAP_NET_RAW before Linux 5.7)", err)
	default:
		return fmt.Errorf("SO_BINDTODEVICE: %w", err)
	}
}

// CheckInterface reports whether the interface exists and is up, with one
// ioctl: cheap enough to run before every flow, so that a flow for a missing
// or downed interface fails at once with a clear reason instead of waiting
// for a route lookup or a DNS timeout. The result is nil, or an *Error
// wrapping ErrNoInterface or ErrInterfaceDown.
func CheckInterface(name string) error {
	if !validName(name) {
		return &Error{Interface: name, Err: ErrNoInterface}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return &Error{Interface: name, Err: ErrNoInterface}
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return &Error{Interface: name, Err: fmt.Errorf("socket for interface check: %w", err)}
		}
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return &Error{Interface: name, Err: ErrNoInterface}
		}
		return &Error{Interface: name, Err: fmt.Errorf("SIOCGIFFLAGS: %w", err)}
	}
	// IFF_RUNNING is the kernel's "operationally up" (carrier present).
	if f := ifr.Uint16(); f&unix.IFF_UP == 0 || f&unix.IFF_RUNNING == 0 {
		return &Error{Interface: name, Err: ErrInterfaceDown}
	}
	return nil
}
