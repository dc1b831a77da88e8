//go:build linux

package bind_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/internal/nstest"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every network namespace these tests create
// (nstest names them PREFIX-PID-N and removes those of dead processes).
const nsPrefix = "ifsb"

// newNetns is a fresh namespace for one test, deleted when it ends.
func newNetns(tb testing.TB) string { return nstest.New(tb, nsPrefix, "").Name }

// helperEnv makes the test binary run lookupHelper instead of the tests:
// the parent starts it with `ip netns exec`, which gives it its own view of
// /etc/resolv.conf.
const helperEnv = "IFSOCKS_BIND_LOOKUP_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(lookupHelper())
	}
	goleak.VerifyTestMain(m)
}

// wantBindError asserts err is a *bind.Error for iface wrapping target.
func wantBindError(tb testing.TB, err error, iface string, target error) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("err = nil, want *bind.Error wrapping %v", target)
	}
	var be *bind.Error
	if !errors.As(err, &be) {
		tb.Fatalf("err = %T %v, want a *bind.Error in its chain", err, err)
	}
	if be.Interface != iface {
		tb.Errorf("bind.Error.Interface = %q, want %q", be.Interface, iface)
	}
	if !errors.Is(err, target) {
		tb.Errorf("err = %v, want errors.Is %v", err, target)
	}
}

func TestCheckInterface(t *testing.T) {
	tests := []struct {
		name    string
		iface   string
		wantErr error
	}{
		{"loopback", "lo", nil},
		{"missing", "nosuch0", bind.ErrNoInterface},
		{"empty name", "", bind.ErrNoInterface},
		{"15 bytes missing", "nosuch012345678", bind.ErrNoInterface},
		{"too long", "nosuch0123456789abcdef", bind.ErrNoInterface},
		{"too long with existing prefix", "lo" + strings.Repeat("x", 20), bind.ErrNoInterface},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := bind.CheckInterface(tt.iface)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckInterface(%q) = %v, want nil", tt.iface, err)
				}
				return
			}
			wantBindError(t, err, tt.iface, tt.wantErr)
		})
	}
}

// TestCheckInterfaceDown changes link state inside a namespace of its own,
// step by step; the steps depend on each other and run in order.
func TestCheckInterfaceDown(t *testing.T) {
	ns := newNetns(t)
	// veth instead of dummy: this kernel may lack the dummy driver, and a
	// veth pair also gives the "up but no carrier" state (peer down).
	nstest.IP(t, "-n", ns, "link", "add", "ifsbv0", "type", "veth", "peer", "name", "ifsbv1")
	steps := []struct {
		name    string
		ip      [][]string // commands run in ns before the check
		iface   string
		wantErr error
	}{
		{"fresh lo is down", nil, "lo", bind.ErrInterfaceDown},
		{"veth down", nil, "ifsbv0", bind.ErrInterfaceDown},
		{"veth up without carrier", [][]string{{"link", "set", "ifsbv0", "up"}}, "ifsbv0", bind.ErrInterfaceDown},
		{"veth up with carrier", [][]string{{"link", "set", "ifsbv1", "up"}}, "ifsbv0", nil},
		{"veth set down again", [][]string{{"link", "set", "ifsbv0", "down"}}, "ifsbv0", bind.ErrInterfaceDown},
		{"lo up", [][]string{{"link", "set", "lo", "up"}}, "lo", nil},
		{"missing in namespace", nil, "eth0", bind.ErrNoInterface},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			for _, c := range st.ip {
				nstest.IP(t, append([]string{"-n", ns}, c...)...)
			}
			var err error
			check := func() {
				if nerr := nstest.Enter(ns, func() error { err = bind.CheckInterface(st.iface); return nil }); nerr != nil {
					t.Fatal(nerr)
				}
			}
			check()
			if st.wantErr == nil {
				// The kernel reports carrier asynchronously after the
				// peer comes up: wait for it, bounded.
				for deadline := time.Now().Add(5 * time.Second); err != nil && time.Now().Before(deadline); {
					time.Sleep(20 * time.Millisecond)
					check()
				}
				if err != nil {
					t.Fatalf("CheckInterface(%q) = %v, want nil", st.iface, err)
				}
				return
			}
			wantBindError(t, err, st.iface, st.wantErr)
		})
	}
}

// listenTCP listens on addr (port 0) and closes the listener at cleanup.
func listenTCP(tb testing.TB, addr string) *net.TCPListener {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func addrPort(tb testing.TB, a net.Addr) netip.AddrPort {
	tb.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		tb.Fatalf("parse %s: %v", a, err)
	}
	return ap
}

// boundDevice reads SO_BINDTODEVICE back from the socket.
func boundDevice(tb testing.TB, c syscall.Conn) string {
	tb.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		tb.Fatalf("SyscallConn: %v", err)
	}
	var dev string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		dev, gerr = unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	}); err != nil {
		tb.Fatalf("Control: %v", err)
	}
	if gerr != nil {
		tb.Fatalf("getsockopt SO_BINDTODEVICE: %v", gerr)
	}
	return dev
}

// acceptOne accepts one connection within a bounded time.
func acceptOne(tb testing.TB, ln *net.TCPListener) *net.TCPConn {
	tb.Helper()
	if err := ln.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	c, err := ln.AcceptTCP()
	if err != nil {
		tb.Fatalf("accept: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func ctxTimeout(tb testing.TB, d time.Duration) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

func TestDialTCP(t *testing.T) {
	tests := []struct {
		name    string
		iface   string
		listen  string
		wantDev string
	}{
		{"lo ipv4", "lo", "127.0.0.1:0", "lo"},
		{"lo ipv6", "lo", "[::1]:0", "lo"},
		{"kernel routing", "", "127.0.0.1:0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listenTCP(t, tt.listen)
			d := bind.Dialer{Interface: tt.iface}
			c, err := d.DialTCP(ctxTimeout(t, 5*time.Second), addrPort(t, ln.Addr()))
			if err != nil {
				t.Fatalf("DialTCP: %v", err)
			}
			defer c.Close()
			if dev := boundDevice(t, c); dev != tt.wantDev {
				t.Errorf("SO_BINDTODEVICE = %q, want %q", dev, tt.wantDev)
			}
			s := acceptOne(t, ln)
			if s.RemoteAddr().String() != c.LocalAddr().String() {
				t.Errorf("accepted %s, dialed from %s", s.RemoteAddr(), c.LocalAddr())
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
				t.Errorf("read %q, %v; want ping", buf, err)
			}
		})
	}
}

// TestFailClosed: a socket that cannot be bound to its interface is never
// connected or used, by any route.
func TestFailClosed(t *testing.T) {
	const iface = "nosuch0"
	d := bind.Dialer{Interface: iface}

	t.Run("DialTCP", func(t *testing.T) {
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
			ln := listenTCP(t, addr)
			c, err := d.DialTCP(ctxTimeout(t, 5*time.Second), addrPort(t, ln.Addr()))
			if c != nil {
				c.Close()
				t.Errorf("DialTCP to %s returned a connection", ln.Addr())
			}
			wantBindError(t, err, iface, bind.ErrNoInterface)
			// The listener must have accepted nothing: the first connection
			// it hands out is the marker dialed now.
			marker, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer marker.Close()
			if s := acceptOne(t, ln); s.RemoteAddr().String() != marker.LocalAddr().String() {
				t.Errorf("listener %s accepted %s before the marker %s: the failed dial connected", ln.Addr(), s.RemoteAddr(), marker.LocalAddr())
			}
		}
	})

	t.Run("ListenUDP", func(t *testing.T) {
		for _, network := range []string{"udp4", "udp6"} {
			pc, err := d.ListenUDP(ctxTimeout(t, 5*time.Second), network)
			if pc != nil {
				pc.Close()
				t.Errorf("ListenUDP(%s) returned a socket", network)
			}
			wantBindError(t, err, iface, bind.ErrNoInterface)
		}
	})

	t.Run("SourceAddr", func(t *testing.T) {
		a, err := d.SourceAddr(ctxTimeout(t, 5*time.Second), netip.MustParseAddr("127.0.0.1"))
		if a.IsValid() {
			t.Errorf("SourceAddr = %s, want none", a)
		}
		wantBindError(t, err, iface, bind.ErrNoInterface)
	})
}

func TestListenUDP(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			pc, err := bind.Dialer{Interface: "lo"}.ListenUDP(ctxTimeout(t, 5*time.Second), network)
			if err != nil {
				t.Fatalf("ListenUDP: %v", err)
			}
			defer pc.Close()
			if dev := boundDevice(t, pc); dev != "lo" {
				t.Errorf("SO_BINDTODEVICE = %q, want lo", dev)
			}
			dst := "127.0.0.1"
			if network == "udp6" {
				dst = "::1"
			}
			peer, err := net.ListenPacket(network, net.JoinHostPort(dst, "0"))
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			if _, err := pc.WriteTo([]byte("hi"), peer.LocalAddr()); err != nil {
				t.Fatalf("WriteTo over lo: %v", err)
			}
			buf := make([]byte, 8)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _, err := peer.ReadFrom(buf); err != nil || string(buf[:n]) != "hi" {
				t.Errorf("peer read %q, %v", buf[:n], err)
			}
		})
	}
}

// TestInterfaceNameNotTruncated: the kernel reads at most 15 bytes of an
// SO_BINDTODEVICE name and stops at a NUL, so a name that is not an
// interface can bind the socket to another one that is. Binding must fail
// closed instead, like CheckInterface does.
func TestInterfaceNameNotTruncated(t *testing.T) {
	t.Run("embedded NUL", func(t *testing.T) {
		const iface = "lo\x00x"
		if err := bind.CheckInterface(iface); err == nil {
			t.Errorf("CheckInterface(%q) = nil, want an error: no such interface", iface)
		}
		pc, err := bind.Dialer{Interface: iface}.ListenUDP(ctxTimeout(t, 5*time.Second), "udp4")
		if err == nil {
			dev := boundDevice(t, pc)
			pc.Close()
			t.Fatalf("ListenUDP with interface %q succeeded, socket bound to %q", iface, dev)
		}
		wantBindError(t, err, iface, bind.ErrNoInterface)
	})

	t.Run("16 bytes, first 15 an interface", func(t *testing.T) {
		ns := newNetns(t)
		const exists = "ifsb-0123456789" // 15 bytes, the kernel maximum
		const iface = exists + "X"
		nstest.IP(t, "-n", ns, "link", "add", exists, "type", "veth", "peer", "name", "ifsbp0")
		var (
			err error
			dev string
		)
		if nerr := nstest.Enter(ns, func() error {
			var pc *net.UDPConn
			pc, err = bind.Dialer{Interface: iface}.ListenUDP(context.Background(), "udp4")
			if err == nil {
				dev, _ = unixBound(pc)
				pc.Close()
			}
			return nil
		}); nerr != nil {
			t.Fatal(nerr)
		}
		if err == nil {
			t.Fatalf("ListenUDP with interface %q succeeded, socket bound to %q", iface, dev)
		}
		wantBindError(t, err, iface, bind.ErrNoInterface)
	})
}

// unixBound is boundDevice without a testing.TB, for use inside nstest.Enter.
func unixBound(c syscall.Conn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var dev string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		dev, gerr = unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	}); err != nil {
		return "", err
	}
	return dev, gerr
}

func TestSourceAddr(t *testing.T) {
	tests := []struct {
		name  string
		iface string
		dst   string
		want  string
	}{
		{"ipv4 via lo", "lo", "127.0.0.1", "127.0.0.1"},
		{"ipv6 via lo", "lo", "::1", "::1"},
		{"ipv4-mapped via lo", "lo", "::ffff:127.0.0.1", "127.0.0.1"},
		{"kernel routing", "", "127.0.0.1", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bind.Dialer{Interface: tt.iface}.SourceAddr(ctxTimeout(t, 5*time.Second), netip.MustParseAddr(tt.dst))
			if err != nil {
				t.Fatalf("SourceAddr(%s): %v", tt.dst, err)
			}
			if got != netip.MustParseAddr(tt.want) {
				t.Errorf("SourceAddr(%s) = %s, want %s", tt.dst, got, tt.want)
			}
		})
	}
}

// TestLookupIPHosts resolves a name /etc/hosts answers ("localhost"), so no
// query is sent; were one sent, the socket is bound to lo and could not
// leave the machine.
func TestLookupIPHosts(t *testing.T) {
	if hosts, err := os.ReadFile("/etc/hosts"); err != nil || !hostsHasLocalhost(string(hosts)) {
		t.Skipf("/etc/hosts has no localhost entry (%v): the lookup would go to DNS", err)
	}
	addrs, err := bind.Dialer{Interface: "lo"}.LookupIP(ctxTimeout(t, 5*time.Second), "localhost")
	if err != nil {
		t.Fatalf("LookupIP(localhost): %v", err)
	}
	if len(addrs) == 0 {
		t.Fatal("LookupIP(localhost) returned no addresses")
	}
	for _, a := range addrs {
		if !a.IsLoopback() || a.Is4In6() {
			t.Errorf("LookupIP(localhost) = %v: %s is not a plain loopback address", addrs, a)
		}
	}
}

func hostsHasLocalhost(hosts string) bool {
	for _, line := range strings.Split(hosts, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		for _, name := range f[min(1, len(f)):] {
			if name == "localhost" {
				return true
			}
		}
	}
	return false
}

// lookupName is not in /etc/hosts and under .invalid (RFC 6761): no real
// server could answer it.
const lookupName = "ifsocks-bind-test.invalid"

// TestLookupIPNoInterface checks that resolving through a missing interface
// fails with the bind error, not a DNS error. A missing interface fails
// SO_BINDTODEVICE before any packet, but to be certain nothing reaches the
// host's real resolver the lookup runs in a child process started by `ip
// netns exec` in a fresh namespace: its /etc/resolv.conf (bind-mounted from
// /etc/netns/NS/resolv.conf) names only 127.0.0.1, where the child listens
// and records every query. The child also checks that an lo-bound lookup
// does reach that listener, so "no query seen" means something.
func TestLookupIPNoInterface(t *testing.T) {
	n := nstest.New(t, nsPrefix, "")
	ns := n.Name
	n.IP(t, "link", "set", "lo", "up")
	if err := n.WriteResolvConf(helperResolvConf); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, self, "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper in %s: %v\n%s", ns, err, out.String())
	}
	t.Logf("helper:\n%s", out.String())
}

const helperResolvConf = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

// lookupHelper runs in the child process inside the namespace. It returns
// the exit status: 0 pass, 1 fail, 2 unsafe environment (nothing done).
func lookupHelper() int {
	rc, err := os.ReadFile("/etc/resolv.conf")
	if err != nil || string(rc) != helperResolvConf {
		// Not our resolv.conf: a lookup could reach the real resolver.
		fmt.Printf("refusing to resolve: /etc/resolv.conf is %q (%v)\n", rc, err)
		return 2
	}
	dns, err := startCanary()
	if err != nil {
		fmt.Println("canary:", err)
		return 1
	}
	defer dns.close()
	fail := 0

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = bind.Dialer{Interface: "nosuch0"}.LookupIP(ctx, lookupName)
	var be *bind.Error
	switch {
	case err == nil:
		fmt.Println("FAIL: LookupIP via nosuch0 succeeded")
		fail = 1
	case !errors.As(err, &be) || !errors.Is(err, bind.ErrNoInterface):
		fmt.Printf("FAIL: LookupIP via nosuch0 = %T %v, want *bind.Error wrapping ErrNoInterface\n", err, err)
		fail = 1
	default:
		fmt.Printf("ok: LookupIP via nosuch0: %v\n", err)
	}
	if n := dns.queries.Load(); n != 0 {
		fmt.Printf("FAIL: %d DNS queries sent through a missing interface\n", n)
		fail = 1
	}

	// Control: through lo the query reaches the canary, which answers
	// NXDOMAIN, and the error is the DNS one.
	_, err = bind.Dialer{Interface: "lo"}.LookupIP(ctx, lookupName)
	var de *net.DNSError
	switch {
	case dns.queries.Load() == 0:
		fmt.Printf("FAIL: lo-bound lookup sent no query to the canary (err %v)\n", err)
		fail = 1
	case !errors.As(err, &de) || !de.IsNotFound || errors.As(err, &be):
		fmt.Printf("FAIL: LookupIP via lo = %T %v, want a not-found *net.DNSError\n", err, err)
		fail = 1
	default:
		fmt.Printf("ok: LookupIP via lo: %v (%d queries)\n", err, dns.queries.Load())
	}
	return fail
}

// canary is a DNS server on 127.0.0.1:53 (UDP and TCP) that counts queries
// and answers NXDOMAIN.
type canary struct {
	udp     net.PacketConn
	tcp     net.Listener
	queries atomic.Int32
	done    chan struct{}
}

func startCanary() (*canary, error) {
	udp, err := net.ListenPacket("udp4", "127.0.0.1:53")
	if err != nil {
		return nil, err
	}
	tcp, err := net.Listen("tcp4", "127.0.0.1:53")
	if err != nil {
		udp.Close()
		return nil, err
	}
	c := &canary{udp: udp, tcp: tcp, done: make(chan struct{}, 2)}
	go func() {
		defer func() { c.done <- struct{}{} }()
		buf := make([]byte, 1500)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			c.queries.Add(1)
			if resp := nxdomain(buf[:n]); resp != nil {
				udp.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		defer func() { c.done <- struct{}{} }()
		for {
			conn, err := tcp.Accept()
			if err != nil {
				return
			}
			c.queries.Add(1)
			conn.Close()
		}
	}()
	return c, nil
}

func (c *canary) close() {
	c.udp.Close()
	c.tcp.Close()
	<-c.done
	<-c.done
}

// nxdomain turns a query into its NXDOMAIN response: the question is kept,
// QR and RA are set and RCODE is 3.
func nxdomain(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	r := append([]byte(nil), q...)
	r[2] |= 0x80        // QR
	r[3] = 0x80 | 3     // RA, NXDOMAIN
	r[6], r[7] = 0, 0   // ANCOUNT
	r[8], r[9] = 0, 0   // NSCOUNT
	r[10], r[11] = 0, 0 // ARCOUNT: drop the EDNS OPT record
	return r[:questionEnd(r)]
}

// questionEnd returns the offset just past the first question of msg.
func questionEnd(msg []byte) int {
	i := 12
	for i < len(msg) && msg[i] != 0 {
		i += int(msg[i]) + 1
	}
	return min(i+1+4, len(msg)) // root label, QTYPE, QCLASS
}
