// Package bind opens outbound sockets that leave through one network
// interface, and resolves names through that same interface.
//
// Every socket is bound with SO_BINDTODEVICE before connect, so the kernel
// routes it by the interface's own routes and gives it the interface's
// source address. Binding fails closed: if the interface cannot be bound,
// the dial fails and nothing is sent by the default route. The package does
// not decide which interface a flow uses nor whether a destination is
// allowed; callers do.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
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

func (e *Error) Error() string {
	if e.Interface == "" {
		return fmt.Sprintf("bind: %v", e.Err)
	}
	return fmt.Sprintf("bind to interface %q: %v", e.Interface, e.Err)
}
func (e *Error) Unwrap() error { return e.Err }

// ErrNoSource is returned (wrapped in *Error) when no interface holds the
// source address to bind.
var ErrNoSource = errors.New("address is not on any interface of this host")

// ErrNoLocalRoute is returned (wrapped in *Error) when a source address
// from a pool bound with FreeBind is not local to the host: neither
// assigned nor inside a route of type local, so replies would never reach
// the socket.
var ErrNoLocalRoute = errors.New("no local route: the host would not receive replies (add one: ip route add local PREFIX dev lo)")

// ErrPoolSpread is returned (wrapped in *Error) when the addresses a flow
// picks from a pool without an interface sit on different interfaces.
var ErrPoolSpread = errors.New("the pool's addresses are on several interfaces; set interface")

// AddrOwner returns the interface that holds the local address a, by
// listing every interface: a netlink dump, too slow for every flow of a busy
// server — the daemon asks its netlink watcher instead.
func AddrOwner(a netip.Addr) (string, bool) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", false
	}
	a = a.Unmap()
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
					return ifc.Name, true
				}
			}
		}
	}
	return "", false
}

// ErrFamily is returned when a Dialer with a Source address of one IP
// family is asked for a socket of the other.
var ErrFamily = errors.New("source address is of the other IP family")

// Dialer opens sockets bound to Interface. The zero value (Interface "")
// uses kernel routing.
type Dialer struct {
	Interface string
	// Source4 and Source6, when valid, are bound as the local address of
	// every socket of their family (with IP_BIND_ADDRESS_NO_PORT for TCP,
	// so the port is chosen at connect time and TIME_WAIT sockets of
	// other destinations do not exhaust the port range). A Dialer with a
	// source of one family only refuses sockets of the other (ErrFamily).
	// Each must be an address of Interface, or local by a route when
	// FreeBind is set.
	Source4, Source6 netip.Addr
	// FreeBind sets IP_FREEBIND or IPV6_FREEBIND, so that a source the
	// host receives by a local route (a prefix routed to it, "AnyIP")
	// but holds on no interface can be bound.
	FreeBind bool
	// Mark, when non-zero, is set as SO_MARK (needs CAP_NET_ADMIN), for
	// policy routing rules that match on it.
	Mark uint32
}

// WithSource returns d with a set as the source of its family.
func (d Dialer) WithSource(a netip.Addr) Dialer {
	if a.Is4() {
		d.Source4 = a
	} else {
		d.Source6 = a
	}
	return d
}

// HasSource reports whether d binds a source address.
func (d Dialer) HasSource() bool { return d.Source4.IsValid() || d.Source6.IsValid() }

// SourceFor returns the source of the family of dst: invalid when d has
// no source, or only one of the other family (then HasSource is true).
func (d Dialer) SourceFor(is4 bool) netip.Addr {
	if is4 {
		return d.Source4
	}
	return d.Source6
}

// String names the egress for logs: the interface, or "" for kernel
// routing.
func (d Dialer) String() string { return d.Interface }

// control is the net.Dialer/ListenConfig hook that prepares the raw socket
// before bind and connect.
func (d Dialer) control(network, address string, c syscall.RawConn) error {
	if d.Interface == "" && d.Mark == 0 && !d.HasSource() {
		return nil
	}
	var berr error
	err := c.Control(func(fd uintptr) {
		berr = prepare(int(fd), network, d)
	})
	if err != nil {
		return err
	}
	if berr != nil {
		return &Error{Interface: d.Interface, Err: berr}
	}
	return nil
}

// local returns the address to bind for network ("tcp4", "udp6", ...), nil
// for none, or ErrFamily.
func (d Dialer) local(network string) (net.Addr, error) {
	if !d.HasSource() {
		return nil, nil
	}
	src := d.SourceFor(network[len(network)-1] == '4')
	if !src.IsValid() {
		return nil, &Error{Interface: d.Interface, Err: ErrFamily}
	}
	ip := net.IP(src.AsSlice())
	if network[:3] == "udp" {
		return &net.UDPAddr{IP: ip}, nil
	}
	return &net.TCPAddr{IP: ip}, nil
}

// netDialer returns a dialer for network ("tcp4", "udp6", ...).
func (d Dialer) netDialer(network string) (*net.Dialer, error) {
	la, err := d.local(network)
	if err != nil {
		return nil, err
	}
	// Go's default keepalive costs four setsockopt calls per socket;
	// callers set keepalive themselves when they want it.
	nd := &net.Dialer{Control: d.control, KeepAlive: -1}
	if la != nil {
		nd.LocalAddr = la
	}
	return nd, nil
}

// DialTCP connects to dst from a socket bound to the interface. The result
// is the concrete *net.TCPConn so that relays can use splice(2).
func (d Dialer) DialTCP(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	network := "tcp4"
	if !dst.Addr().Unmap().Is4() {
		network = "tcp6"
	}
	nd, err := d.netDialer(network)
	if err != nil {
		return nil, err
	}
	c, err := nd.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// ListenUDP opens an unconnected UDP socket bound to the interface (and to
// Source, when set). network is "udp4" or "udp6".
func (d Dialer) ListenUDP(ctx context.Context, network string) (*net.UDPConn, error) {
	la, err := d.local(network)
	if err != nil {
		return nil, err
	}
	addr := ""
	if la != nil {
		addr = la.String()
	}
	lc := net.ListenConfig{Control: d.control}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// ListenTCP opens a TCP listener on the interface, at the source of
// addr's family or else at addr, port chosen by the kernel (for the BIND
// command).
func (d Dialer) ListenTCP(ctx context.Context, addr netip.Addr) (*net.TCPListener, error) {
	network := "tcp6"
	if addr.Is4() {
		network = "tcp4"
	}
	if src := d.SourceFor(addr.Is4()); src.IsValid() {
		addr = src
	} else if d.HasSource() {
		return nil, &Error{Interface: d.Interface, Err: ErrFamily}
	}
	lc := net.ListenConfig{Control: d.control, KeepAlive: -1} // see netDialer
	ln, err := lc.Listen(ctx, network, netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
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
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := d.dialResolver(ctx, network, address)
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

// dialResolver opens a socket to a nameserver. With a source address,
// the socket's family must be one the Dialer has a source for, so the
// network ("udp", "tcp") is narrowed to the nameserver's family; when the
// Dialer lacks it, the dial fails and the resolver tries the next one.
func (d Dialer) dialResolver(ctx context.Context, network, address string) (net.Conn, error) {
	if d.HasSource() && (network == "udp" || network == "tcp") {
		ap, err := netip.ParseAddrPort(address)
		switch {
		case err == nil && ap.Addr().Unmap().Is4():
			network += "4"
		case err == nil:
			network += "6"
		case d.Source4.IsValid():
			network += "4"
		default:
			network += "6"
		}
	}
	nd, err := d.netDialer(network)
	if err != nil {
		return nil, err
	}
	return nd.DialContext(ctx, network, address)
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
	nd, err := d.netDialer(network)
	if err != nil {
		return netip.Addr{}, err
	}
	c, err := nd.DialContext(ctx, network, netip.AddrPortFrom(dst, 9).String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
