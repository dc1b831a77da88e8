// Command ifsbare is the bare forwarder of the ifsocks benchmark
// (bench/run.sh, subjects "bare" and "bare-socks5"): the least a
// user-space relay that terminates both connections can do, run on the
// same path as ifsocks so that its figures are the ceiling ifsocks is
// measured against.
//
// Each TCP port given is forwarded to the same port of one fixed upstream
// address: accept (with no TCP keepalive, as ifsocks's listeners), dial
// the upstream from a socket bound to the egress interface with the
// daemon's own bind.Dialer (SO_BINDTODEVICE, as for an ifsocks user with
// interface = "wan2"), then io.Copy each way between the two
// *net.TCPConn, which Go does with splice(2), passing a half-close on
// with CloseWrite. Each UDP port is forwarded by one socket on each side
// with the daemon's batched datagram I/O (package udpio: recvmmsg and
// sendmmsg), the upstream socket bound to the interface, replies going to
// the client address last seen.
//
// With -socks5 USER:PASS the TCP ports speak SOCKS5 instead (subject
// "bare-socks5"): the least a SOCKS5 CONNECT relay must do, so that the
// benchmark's connection rate has a ceiling that pays for the protocol
// too. It reads the greeting and picks username/password (0xFF if the
// client does not offer it), checks the RFC 1929 login against the one
// user with a constant-time compare of the plaintext (no bcrypt, no
// cache), reads the CONNECT request (IPv4, IPv6 or a name, resolved by
// bind.Dialer's lookup from the interface; other commands get 0x07, other
// address types 0x08), dials the destination with the same bind.Dialer,
// replies with the upstream socket's address and relays with the very
// code of the forwarder above. Each client message costs one read(2)
// through a small buffer, each reply one write(2).
//
// What it is not: a proxy. It has no policy, no limits, no logs, no
// metrics and no timeouts but the upstream connect's (a client that never
// finishes its handshake holds its goroutine until it closes); the
// forwarder serves one UDP client at a time and the SOCKS5 mode has no
// BIND, no UDP ASSOCIATE and one user. It is a measuring stick, not
// something to deploy.
//
// Usage:
//
//	ifsbare -listen IP -upstream IP -interface NAME -tcp 5001,5002 -udp 5003
//	ifsbare -listen IP -interface NAME -tcp 1080 -socks5 USER:PASS
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/bind"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ifsbare:", err)
		}
		os.Exit(1)
	}
}

// forwarder is one run's settings.
type forwarder struct {
	listen   netip.Addr
	upstream netip.Addr
	dialer   bind.Dialer
	tcp, udp []uint16
	creds    *credentials // -socks5: the TCP ports speak SOCKS5
}

func run(args []string) error {
	fs := flag.NewFlagSet("ifsbare", flag.ContinueOnError)
	listen := fs.String("listen", "", "IP address to accept clients on")
	upstream := fs.String("upstream", "", "IP address to forward to (the same port)")
	iface := fs.String("interface", "", "egress interface (SO_BINDTODEVICE); empty: kernel routing")
	tcp := fs.String("tcp", "", "comma-separated TCP ports to forward")
	udp := fs.String("udp", "", "comma-separated UDP ports to forward")
	socks5 := fs.String("socks5", "", "USER:PASS: the TCP ports speak SOCKS5 CONNECT with this one RFC 1929 user (no -upstream, no -udp)")
	life := fs.Duration("lifetime", 2*time.Hour, "exit after this long even if never signalled")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := parseFlags(*listen, *upstream, *iface, *tcp, *udp, *socks5)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *life)
	defer cancel()
	return f.serve(ctx)
}

func parseFlags(listen, upstream, iface, tcp, udp, socks5 string) (*forwarder, error) {
	f := &forwarder{dialer: bind.Dialer{Interface: iface}}
	var err error
	if f.listen, err = netip.ParseAddr(listen); err != nil {
		return nil, fmt.Errorf("-listen %q: %w", listen, err)
	}
	if socks5 != "" {
		// The client names the destination; there is no UDP ASSOCIATE.
		if f.creds, err = parseCredentials(socks5); err != nil {
			return nil, fmt.Errorf("-socks5: %w", err)
		}
		if upstream != "" || udp != "" {
			return nil, errors.New("-socks5 takes no -upstream and no -udp")
		}
		if f.tcp, err = parsePorts(tcp); err != nil || len(f.tcp) == 0 {
			return nil, fmt.Errorf("-tcp %q: want the SOCKS5 ports (%v)", tcp, err)
		}
		return f, nil
	}
	if f.upstream, err = netip.ParseAddr(upstream); err != nil {
		return nil, fmt.Errorf("-upstream %q: %w", upstream, err)
	}
	if f.listen.Is4() != f.upstream.Is4() {
		return nil, fmt.Errorf("-listen %s -upstream %s: want one IP family", listen, upstream)
	}
	if f.tcp, err = parsePorts(tcp); err != nil {
		return nil, fmt.Errorf("-tcp: %w", err)
	}
	if f.udp, err = parsePorts(udp); err != nil {
		return nil, fmt.Errorf("-udp: %w", err)
	}
	if len(f.tcp)+len(f.udp) == 0 {
		return nil, errors.New("no port to forward: set -tcp or -udp")
	}
	return f, nil
}

func parsePorts(s string) ([]uint16, error) {
	if s == "" {
		return nil, nil
	}
	var ports []uint16
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q: want a port 1-65535", p)
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// serve opens every socket first, so that a port already taken fails the
// start rather than a test, then forwards until ctx ends. Closing the
// sockets ends the accept loops and the UDP copiers, which it waits for;
// forwarded TCP connections still open are dropped with the process.
func (f *forwarder) serve(ctx context.Context) error {
	var (
		closers []func() error
		wg      sync.WaitGroup
	)
	defer func() {
		for _, c := range closers {
			c()
		}
		wg.Wait()
	}()
	for _, p := range f.tcp {
		// No keepalive on accepted sockets: Go's default costs four
		// setsockopt calls per connection, and ifsocks turns it off too
		// (as bind.Dialer does for the upstream socket).
		lc := net.ListenConfig{KeepAlive: -1}
		l, err := lc.Listen(ctx, f.network("tcp"), netip.AddrPortFrom(f.listen, p).String())
		if err != nil {
			return err
		}
		ln := l.(*net.TCPListener)
		closers = append(closers, ln.Close)
		serve := f.socks
		if f.creds == nil {
			up := netip.AddrPortFrom(f.upstream, p)
			serve = func(c *net.TCPConn) { f.pipe(c, up) }
		}
		wg.Go(func() { acceptLoop(ln, serve) })
	}
	for _, p := range f.udp {
		u, err := f.openUDP(ctx, p)
		if err != nil {
			return err
		}
		closers = append(closers, u.close)
		wg.Go(u.run)
	}
	if f.creds != nil {
		fmt.Fprintf(os.Stderr, "forwarding %s tcp %v as SOCKS5 by %q\n", f.listen, f.tcp, f.dialer.Interface)
	} else {
		fmt.Fprintf(os.Stderr, "forwarding %s tcp %v udp %v to %s by %q\n", f.listen, f.tcp, f.udp, f.upstream, f.dialer.Interface)
	}
	<-ctx.Done()
	return nil
}

// network is "tcp4" or "tcp6" (or udp...) for the listen address.
func (f *forwarder) network(proto string) string {
	if f.listen.Is4() {
		return proto + "4"
	}
	return proto + "6"
}
