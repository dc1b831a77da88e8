// Package bind opens outbound sockets that leave through one network
// interface, and resolves names through that same interface.
//
// Every socket is bound with SO_BINDTODEVICE before connect, so the kernel
// routes it by the interface's own routes and gives it the interface's
// source address. Binding fails closed: if the interface cannot be bound,
// the dial fails and nothing is sent by the default route. The package does
// not decide which interface a flow uses nor whether a destination is
// allowed; callers do.
package bind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
)

// ErrNoInterface is returned (wrapped in *Error) when the interface does
// not exist.
var ErrNoInterface = errors.New("no such interface")

// ErrInterfaceDown is returned (wrapped in *Error) when the interface exists
// but is administratively down or has no carrier.
var ErrInterfaceDown = errors.New("interface is down")

// ErrUnsupported is returned on systems without SO_BINDTODEVICE.
var ErrUnsupported = errors.New("binding to an interface is not supported on this OS")

// Error is a failure to bind a socket to Interface. Callers treat it as
// "network unreachable" for the flow.
type Error struct {
	Interface string
	Err       error
}

func (e *Error) Error() string { return fmt.Sprintf("bind to interface %q: %v", e.Interface, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Dialer opens sockets bound to Interface. The zero value (Interface "")
// uses kernel routing.
type Dialer struct {
	Interface string
}

// control is the net.Dialer/ListenConfig hook that binds the raw socket
// before connect or bind.
func (d Dialer) control(network, address string, c syscall.RawConn) error {
	if d.Interface == "" {
		return nil
	}
	var berr error
	if err := c.Control(func(fd uintptr) { berr = bindToDevice(int(fd), d.Interface) }); err != nil {
		return err
	}
	if berr != nil {
		return &Error{Interface: d.Interface, Err: berr}
	}
	return nil
}

func (d Dialer) netDialer() *net.Dialer {
	return &net.Dialer{Control: d.control}
}

// DialTCP connects to dst from a socket bound to the interface. The result
// is the concrete *net.TCPConn so that relays can use splice(2).
func (d Dialer) DialTCP(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := d.netDialer().DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// ListenUDP opens an unconnected UDP socket bound to the interface.
// network is "udp4" or "udp6".
func (d Dialer) ListenUDP(ctx context.Context, network string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: d.control}
	pc, err := lc.ListenPacket(ctx, network, "")
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// LookupIP resolves host to addresses with DNS queries sent from sockets
// bound to the interface, to the nameservers of /etc/resolv.conf. Names in
// /etc/hosts are answered from there, as the system resolver would.
//
// When a query could not be sent because of the interface (missing, down,
// not bindable), the error is that *Error or network error rather than a
// generic DNS failure, so the caller can answer "network unreachable".
func (d Dialer) LookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	var (
		mu      sync.Mutex
		dialErr error
	)
	nd := d.netDialer()
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, address)
			if err != nil {
				mu.Lock()
				if dialErr == nil {
					dialErr = err
				}
				mu.Unlock()
			}
			return c, err
		},
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		var dnsErr *net.DNSError
		notFound := errors.As(err, &dnsErr) && dnsErr.IsNotFound
		if dialErr != nil && !notFound && !errors.Is(dialErr, context.Canceled) && !errors.Is(dialErr, context.DeadlineExceeded) {
			return nil, fmt.Errorf("resolve %q: %w", host, dialErr)
		}
		return nil, err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// SourceAddr reports the source address the kernel chooses for packets to
// dst from a socket bound to the interface. Nothing is sent: connect(2) on
// a UDP socket only performs the route lookup.
func (d Dialer) SourceAddr(ctx context.Context, dst netip.Addr) (netip.Addr, error) {
	dst = dst.Unmap()
	network := "udp4"
	if dst.Is6() {
		network = "udp6"
	}
	c, err := d.netDialer().DialContext(ctx, network, netip.AddrPortFrom(dst, 9).String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
