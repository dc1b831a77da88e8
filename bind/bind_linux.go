package bind

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// validName refuses names the kernel would silently cut short: it reads
// an interface name only up to a NUL byte or IFNAMSIZ-1 bytes, so
// "eth1\x00x" or a 16-byte name would bind to some other interface.
func validName(iface string) bool {
	return iface != "" && len(iface) < unix.IFNAMSIZ && !strings.ContainsRune(iface, 0)
}

// prepare applies d to a new socket of network ("tcp4", "udp6", ...):
// the interface, the mark, and for TCP with a source address
// IP_BIND_ADDRESS_NO_PORT, which defers the choice of the local port from
// bind to connect. Without it every bind would need a port free for all
// destinations, and TIME_WAIT sockets would soon exhaust the range.
func prepare(fd int, network string, d Dialer) error {
	if d.Interface != "" {
		if err := bindToDevice(fd, d.Interface); err != nil {
			return err
		}
	}
	if d.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(d.Mark)); err != nil {
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("SO_MARK %d: %w (needs CAP_NET_ADMIN)", d.Mark, err)
			}
			return fmt.Errorf("SO_MARK %d: %w", d.Mark, err)
		}
	}
	if d.HasSource() && strings.HasPrefix(network, "tcp") {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return fmt.Errorf("IP_BIND_ADDRESS_NO_PORT: %w", err)
		}
	}
	if d.FreeBind {
		// The socket's family is the network's, except "tcp"/"udp"
		// (BIND listeners), where Go picks it from the address.
		lvl, opt, name := unix.IPPROTO_IP, unix.IP_FREEBIND, "IP_FREEBIND"
		if network[len(network)-1] == '6' {
			lvl, opt, name = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND"
		}
		if err := unix.SetsockoptInt(fd, lvl, opt, 1); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
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
		// Without CAP_NET_RAW the kernel sets SO_BINDTODEVICE only from
		// Linux 5.7, and only on a socket not yet bound to a device.
		return fmt.Errorf("SO_BINDTODEVICE: %w (needs CAP_NET_RAW: before Linux 5.7, or when the socket is already bound to a device, e.g. under ip vrf exec)", err)
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

// IsLocal reports whether the kernel takes a as an address of this host:
// assigned to an interface, or inside a route of type local (a prefix
// routed to the host with "ip route add local PREFIX dev lo"). A source
// bound with FreeBind that is not local would send packets whose replies
// the kernel does not deliver to the socket. One netlink request: callers
// on the flow path cache the answer (source.Pool.Local).
func IsLocal(a netip.Addr) bool {
	routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL {
			return true
		}
	}
	return false
}
