package socks

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/policy"
)

func udpSettings(tb testing.TB) *Settings {
	st := testSettings(tb)
	st.UDP = UDPSettings{MaxAssociations: 4, MaxDatagram: 2048, ReplyFilter: FilterAddressPort}
	return st
}

// udpEcho answers every datagram from the socket it arrived on, or, with
// fromOther, from a second socket (another port), which a port-restricted
// reply filter must drop.
type udpEcho struct {
	conn, other *net.UDPConn
	got         chan []byte
}

func startUDPEcho(tb testing.TB, network, addr string, fromOther bool) *udpEcho {
	tb.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			tb.Skipf("listen %s %s: %v", network, addr, err)
		}
		return c
	}
	e := &udpEcho{conn: listen(), other: listen(), got: make(chan []byte, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, src, err := e.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.got <- bytes.Clone(buf[:n])
			reply := e.conn
			if fromOther {
				reply = e.other
			}
			reply.WriteToUDPAddrPort(buf[:n], src)
		}
	}()
	tb.Cleanup(func() { e.conn.Close(); e.other.Close(); <-done })
	return e
}

func (e *udpEcho) addr() netip.AddrPort { return addrPortOfUDP(e.conn.LocalAddr()) }

// assertNothing checks the echo server received nothing for d.
func (e *udpEcho) assertNothing(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case b := <-e.got:
		tb.Fatalf("echo server received %q, want nothing", b)
	case <-time.After(d):
	}
}

// udpClient is an associated client: the control connection and the UDP
// socket it sends from.
type udpClient struct {
	tb    testing.TB
	ctl   *rawClient
	conn  *net.UDPConn
	relay netip.AddrPort
}

func associate(tb testing.TB, env *testEnv, user, pass string) *udpClient {
	tb.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	r := dialRaw(tb, env.addr)
	r.login(user, pass)
	rep, relay := r.associate(addrPortOfUDP(conn.LocalAddr()))
	if rep != RepSucceeded {
		tb.Fatalf("UDP ASSOCIATE reply %#x", rep)
	}
	return &udpClient{tb: tb, ctl: r, conn: conn, relay: relay}
}

func (r *rawClient) associate(from netip.AddrPort) (byte, netip.AddrPort) {
	r.tb.Helper()
	r.send(append([]byte{5, cmdUDPAssociate, 0}, appendAddr(nil, from)...)...)
	return r.readReply()
}

func (u *udpClient) sendRaw(b []byte) {
	u.tb.Helper()
	if _, err := u.conn.WriteToUDPAddrPort(b, u.relay); err != nil {
		u.tb.Fatal(err)
	}
}

func (u *udpClient) send(dst netip.AddrPort, payload []byte) {
	u.tb.Helper()
	u.sendRaw(append(append([]byte{0, 0, 0}, appendAddr(nil, dst)...), payload...))
}

// recv reads one reply and parses its header.
func (u *udpClient) recv(timeout time.Duration) (Addr, []byte, error) {
	buf := make([]byte, 65535)
	u.conn.SetReadDeadline(time.Now().Add(timeout))
	n, _, err := u.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return Addr{}, nil, err
	}
	return parseUDPHeader(buf[:n])
}

func TestUDPAssociateEcho(t *testing.T) {
	env := startServer(t, udpSettings(t))
	for _, tt := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tt.network, func(t *testing.T) {
			echo := startUDPEcho(t, tt.network, tt.addr, false)
			u := associate(t, env, "alice", alicePass)
			if u.relay.Addr() != netip.MustParseAddr("127.0.0.1") || u.relay.Port() == 0 {
				t.Fatalf("relay address %v, want 127.0.0.1:port (the control connection's local IP)", u.relay)
			}
			u.send(echo.addr(), []byte("ping"))
			src, payload, err := u.recv(2 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// The reply header names the echo server: for IPv6, ATYP 4
			// with the exact address and port.
			if netip.AddrPortFrom(src.IP, src.Port) != echo.addr() || string(payload) != "ping" {
				t.Fatalf("reply from %v %q, want %v \"ping\"", src, payload, echo.addr())
			}
		})
	}
}

func TestUDPAssociateName(t *testing.T) {
	env := startServer(t, udpSettings(t))
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "bob", bobPass)
	msg := append([]byte{0, 0, 0, atypDomain, 9}, "localhost"...)
	msg = append(msg, byte(echo.addr().Port()>>8), byte(echo.addr().Port()))
	u.sendRaw(append(msg, "by name"...))
	src, payload, err := u.recv(2 * time.Second)
	if err != nil || string(payload) != "by name" || src.Port != echo.addr().Port() {
		t.Fatalf("reply %v %q %v", src, payload, err)
	}
}

// TestUDPDrops: each datagram that must not pass does not, and is counted
// under its reason in the association's log line.
func TestUDPDrops(t *testing.T) {
	st := udpSettings(t)
	st.Policy = policy.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}, false)
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "alice", alicePass)

	// A socket that did not associate, on the same IP but another port.
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	hdr := append([]byte{0, 0, 0}, appendAddr(nil, echo.addr())...)
	stranger.WriteToUDPAddrPort(append(hdr, "stranger"...), u.relay)
	u.sendRaw(append([]byte{0, 0, 1}, append(hdr[3:], "frag"...)...)) // FRAG = 1
	u.sendRaw([]byte{0, 0})                                           // too short
	u.send(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), echo.addr().Port()), []byte("denied"))
	u.send(echo.addr(), make([]byte, 2049)) // over MaxDatagram
	echo.assertNothing(t, 300*time.Millisecond)

	u.send(echo.addr(), []byte("ok"))
	if _, p, err := u.recv(2 * time.Second); err != nil || string(p) != "ok" {
		t.Fatalf("valid datagram after the drops: %q %v", p, err)
	}
	u.ctl.c.Close()
	line := waitAssocLog(t, env)
	want := map[string]int64{"foreign_source": 1, "fragmented": 1, "malformed": 1, "denied": 1, "too_large": 1}
	got := line["dropped"].(map[string]any)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("dropped[%s] = %v, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if line["dgrams_up"] != int64(1) || line["dgrams_down"] != int64(1) || line["bytes_up"] != int64(2) {
		t.Errorf("counts %v", line)
	}
}

func waitAssocLog(tb testing.TB, env *testEnv) map[string]any {
	tb.Helper()
	waitFor(tb, 3*time.Second, "association log", func() bool {
		return env.logs.FilterMessage("udp association").Len() > 0
	})
	return env.logs.FilterMessage("udp association").All()[0].ContextMap()
}

// TestUDPReplyFilter: a reply from another port of the destination is
// dropped by default and passed with FilterNone.
func TestUDPReplyFilter(t *testing.T) {
	for _, tt := range []struct {
		filter ReplyFilter
		pass   bool
	}{{FilterAddressPort, false}, {FilterAddress, true}, {FilterNone, true}} {
		t.Run(fmt.Sprint(tt.filter), func(t *testing.T) {
			st := udpSettings(t)
			st.UDP.ReplyFilter = tt.filter
			env := startServer(t, st)
			echo := startUDPEcho(t, "udp4", "127.0.0.1:0", true)
			u := associate(t, env, "alice", alicePass)
			u.send(echo.addr(), []byte("x"))
			_, _, err := u.recv(300 * time.Millisecond)
			if tt.pass != (err == nil) {
				t.Fatalf("filter %v: reply err = %v, want pass=%v", tt.filter, err, tt.pass)
			}
		})
	}
}

// TestUDPControlClose: once the control connection closes, the relay port
// is gone and nothing more is relayed.
func TestUDPControlClose(t *testing.T) {
	env := startServer(t, udpSettings(t))
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	before := openFDs(t)
	u := associate(t, env, "alice", alicePass)
	u.send(echo.addr(), []byte("1"))
	if _, _, err := u.recv(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	<-echo.got
	u.ctl.c.Close()
	waitAssocLog(t, env)
	u.send(echo.addr(), []byte("after close"))
	echo.assertNothing(t, 300*time.Millisecond)
	u.conn.Close()
	// At most as many: descriptors of earlier tests may still be closing.
	waitFor(t, 5*time.Second, "descriptors back to before", func() bool { return openFDs(t) <= before })
}

func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skip("no /proc/self/fd")
	}
	return len(ents)
}

func TestUDPPortLock(t *testing.T) {
	env := startServer(t, udpSettings(t))
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	a, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	b, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer a.Close()
	defer b.Close()
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	// Port zero: the first datagram's port (a's) is locked in.
	rep, relay := r.associate(netip.MustParseAddrPort("0.0.0.0:0"))
	if rep != RepSucceeded {
		t.Fatalf("reply %#x", rep)
	}
	hdr := append([]byte{0, 0, 0}, appendAddr(nil, echo.addr())...)
	a.WriteToUDPAddrPort(append(hdr, "from a"...), relay)
	if got := <-echo.got; string(got) != "from a" {
		t.Fatalf("echo got %q", got)
	}
	b.WriteToUDPAddrPort(append(hdr, "from b"...), relay)
	echo.assertNothing(t, 300*time.Millisecond)
}

func TestUDPLimits(t *testing.T) {
	env := startServer(t, udpSettings(t)) // MaxAssociations 4
	for i := 0; i < 4; i++ {
		associate(t, env, "alice", alicePass)
	}
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.associate(netip.MustParseAddrPort("0.0.0.0:0")); rep != RepNotAllowed {
		t.Fatalf("5th association: reply %#x, want %#x", rep, RepNotAllowed)
	}
	// Another user is not affected.
	associate(t, env, "bob", bobPass)
	// carol's interface does not exist.
	r = dialRaw(t, env.addr)
	r.login("carol", "carol-pw")
	if rep, _ := r.associate(netip.MustParseAddrPort("0.0.0.0:0")); rep != RepNetworkUnreachable {
		t.Fatalf("carol: reply %#x, want %#x", rep, RepNetworkUnreachable)
	}
}

// TestUDPWindowedLoss sends 2,000 datagrams of 512 bytes in windows of 50
// and requires under 1 % loss, with every payload intact.
func TestUDPWindowedLoss(t *testing.T) {
	env := startServer(t, udpSettings(t))
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() { // drain the echo server's record; only replies matter here
		defer close(drained)
		for {
			select {
			case <-echo.got:
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-drained }()
	u := associate(t, env, "alice", alicePass)
	const total, window = 2000, 50
	received := 0
	seen := map[[2]byte]bool{}
	for w := 0; w < total/window; w++ {
		for i := 0; i < window; i++ {
			p := bytes.Repeat([]byte{byte(w), byte(i)}, 256)
			u.send(echo.addr(), p)
		}
		for i := 0; i < window; i++ {
			_, p, err := u.recv(500 * time.Millisecond)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			// A reply of an earlier window may arrive late on a loaded
			// machine (its wait timed out); one from the future or a
			// mixed payload would be corruption.
			if len(p) != 512 || p[0] > byte(w) || !bytes.Equal(p, bytes.Repeat(p[:2], 256)) {
				t.Fatalf("window %d: corrupt payload % x...", w, p[:4])
			}
			if id := [2]byte{p[0], p[1]}; !seen[id] {
				seen[id] = true
				received++
			}
		}
	}
	if loss := float64(total-received) / total; loss >= 0.01 {
		t.Fatalf("received %d of %d (%.2f%% loss)", received, total, loss*100)
	}
}

func TestParseUDPHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		dst     Addr
		payload string
		err     error
	}{
		{"ipv4", []byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 'q'}, Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 53}, "q", nil},
		{"ipv6 empty payload", append(append([]byte{0, 0, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 53),
			Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 53}, "", nil},
		{"domain", append([]byte{0, 0, 0, 3, 3}, "a.b\x00\x35data"...), Addr{Name: "a.b", Port: 53}, "data", nil},
		{"fragment", []byte{0, 0, 1, 1, 10, 0, 0, 1, 0, 53}, Addr{}, "", errFragment},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst, p, err := parseUDPHeader(tt.in)
			if !errors.Is(err, tt.err) || dst != tt.dst || string(p) != tt.payload {
				t.Fatalf("got %+v %q %v", dst, p, err)
			}
		})
	}
	for _, bad := range [][]byte{{}, {0, 0, 0}, {1, 0, 0, 1, 10, 0, 0, 1, 0, 53}, {0, 0, 0, 9, 1}, {0, 0, 0, 1, 10, 0}} {
		if _, _, err := parseUDPHeader(bad); err == nil {
			t.Errorf("% x accepted", bad)
		}
	}
}

func FuzzParseUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 10, 0, 0, 1, 0, 53, 'q'})
	f.Add(append([]byte{0, 0, 0, 3, 3}, "a.b\x00\x35data"...))
	f.Add(append(append([]byte{0, 0, 0, 4}, make([]byte, 16)...), 0, 53))
	f.Fuzz(func(t *testing.T, in []byte) {
		dst, payload, err := parseUDPHeader(in)
		if err != nil {
			return
		}
		wantAtyp := byte(atypIPv4)
		if dst.IP.Is6() {
			wantAtyp = atypIPv6
		}
		if dst.Name != "" || in[3] != wantAtyp {
			return // names, IP literals sent as names, mapped IPv4
		}
		// Re-encoding the header must give back the same datagram.
		back := appendUDPReply(nil, netip.AddrPortFrom(dst.IP, dst.Port), payload)
		if !bytes.Equal(back, in) {
			t.Fatalf("round trip % x -> % x", in, back)
		}
	})
}

func TestUDPIdleTimeout(t *testing.T) {
	st := udpSettings(t)
	st.IdleTimeout = 300 * time.Millisecond
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "alice", alicePass)
	// Traffic every 100 ms keeps the association for 3 idle periods.
	var start time.Time
	for i := 0; i < 9; i++ {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		u.send(echo.addr(), []byte("keep"))
		if _, _, err := u.recv(time.Second); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		start = time.Now()
	}
	u.ctl.expectClosed()
	if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
		t.Fatalf("association closed %v after the last datagram, want about 300ms", el)
	}
	if line := waitAssocLog(t, env); line["outcome"] != outcomeIdle || line["dgrams_up"] != int64(9) {
		t.Fatalf("log %v", line)
	}
}

// TestUDPPortRangeAndAdvertise: relay ports come from udp_ports, the reply
// carries udp_advertise, and an exhausted range is refused (0x01).
func TestUDPPortRangeAndAdvertise(t *testing.T) {
	// Find two adjacent free UDP ports on loopback.
	var lo uint16
	for try := 0; try < 50 && lo == 0; try++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		p := uint16(c.LocalAddr().(*net.UDPAddr).Port)
		c2, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(p) + 1})
		c.Close()
		if err == nil {
			c2.Close()
			lo = p
		}
	}
	if lo == 0 {
		t.Skip("no two adjacent free UDP ports")
	}
	st := udpSettings(t)
	st.UDP.PortMin, st.UDP.PortMax = lo, lo+1
	st.UDP.Advertise = netip.MustParseAddr("192.0.2.7")
	env := startServer(t, st)
	seen := map[uint16]bool{}
	for i := 0; i < 2; i++ {
		u := associate(t, env, "alice", alicePass)
		if u.relay.Addr() != st.UDP.Advertise || u.relay.Port() < lo || u.relay.Port() > lo+1 {
			t.Fatalf("reply BND %v, want 192.0.2.7:%d-%d", u.relay, lo, lo+1)
		}
		seen[u.relay.Port()] = true
	}
	if len(seen) != 2 {
		t.Fatalf("ports %v: want both of the range", seen)
	}
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.associate(netip.MustParseAddrPort("0.0.0.0:0")); rep != RepGeneralFailure {
		t.Fatalf("range exhausted: reply %#x, want %#x", rep, RepGeneralFailure)
	}
}

// udpRelayGoroutines counts the goroutines relaying datagrams: serving
// an association's group, and serving one socket each.
func udpRelayGoroutines() (group, each int) {
	buf := make([]byte, 1<<20)
	s := string(buf[:runtime.Stack(buf, true)])
	return strings.Count(s, "(*association).serveGroup("), strings.Count(s, "(*association).serveEach.func")
}

// TestUDPOneGoroutine: on Linux one goroutine relays both ways for an
// association with both families' outbound sockets, and it ends with
// the association.
func TestUDPOneGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("one goroutine per association needs epoll")
	}
	env := startServer(t, udpSettings(t))
	echo4 := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	echo6 := startUDPEcho(t, "udp6", "[::1]:0", false)
	u := associate(t, env, "alice", alicePass)
	for range 3 {
		for _, echo := range []*udpEcho{echo4, echo6} {
			u.send(echo.addr(), []byte("both"))
			if src, payload, err := u.recv(5 * time.Second); err != nil || string(payload) != "both" || netip.AddrPortFrom(src.IP, src.Port) != echo.addr() {
				t.Fatalf("reply from %v %q %v, want %v \"both\"", src, payload, err, echo.addr())
			}
		}
	}
	if group, each := udpRelayGoroutines(); group != 1 || each != 0 {
		t.Errorf("%d goroutines serving a group and %d serving one socket, want 1 and 0", group, each)
	}
	u.ctl.c.Close()
	waitAssocLog(t, env)
	waitFor(t, 5*time.Second, "the relay goroutine to end", func() bool {
		group, each := udpRelayGoroutines()
		return group+each == 0
	})
}
