package socks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/bcrypt"
)

// FuzzServeLoopback drives a real server on loopback through the paths
// FuzzServeConn cannot reach over net.Pipe: CONNECT with its relay, BIND
// with its peer, UDP ASSOCIATE with its datagrams, and the replies of each.
// The targets are in-process echo servers on loopback; every egress is
// bound to lo and the policy refuses every address that is not loopback,
// so no input can send a packet off the host; no input names anything but
// "localhost" (resolved from /etc/hosts), so none causes a DNS query; and
// loopback targets are only ever the echoes' ports, so no input touches
// another program's loopback service.
//
// The input chooses the login, the command, the target and its encoding
// (IPv4, IPv4-mapped, NAT64, a name, raw bytes), whether data is
// pipelined after the request, and the data and datagrams sent. The
// server must answer as RFC 1928 and the policy say, relay the data
// intact, end the connection and its goroutines once the client hangs up,
// keep its log printable, and never panic (a recovered panic is logged
// and counted, and fails the input).
func FuzzServeLoopback(f *testing.F) {
	rig := newLoopbackRig(f)
	for _, seed := range [][]byte{
		{0x00, 'h', 'i'},                  // alice, CONNECT to the echo
		{0x80, 'e', 'a', 'r', 'l', 'y'},   // pipelined
		{0x01 | 2<<4, 'n', 'a', 'm', 'e'}, // bob, CONNECT localhost
		{3 << 4, 'm', 'a', 'p'},           // CONNECT ::ffff:127.0.0.1
		{7 << 4},                          // CONNECT 64:ff9b::7f00:1 (denied)
		{4 << 4, 10, 0, 0, 1, 0, 80},      // CONNECT 10.0.0.1:80 (denied)
		{4 << 4, 127, 0, 0, 1, 0, 1},      // CONNECT 127.0.0.1:1 (refused)
		{5<<4 | 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 7},
		{0x02},                       // wrong password
		{0x03},                       // no acceptable method
		{1 << 2, 'b', 'i', 'n', 'd'}, // BIND 127.0.0.1
		{1<<2 | 6<<4, 'a', 'n', 'y'}, // BIND 0.0.0.0
		{1<<2 | 2<<4, 'l', 'h'},      // BIND localhost
		{1<<2 | 3<<4, 'm'},           // BIND ::ffff:127.0.0.1
		{2 << 2, 0, 3, 'a', 'b', 'c', 1, 2, 'x', 'y', 2, 6, 127, 0, 0, 1, 0, 9},
		{2<<2 | 0x80, 0, 1, 'z', 3, 12, 0, 0, 1, 1, 127, 0, 0, 1, 0, 1, 'f', 'r'},
		{3 << 2, 9}, // unknown command
		{3 << 2, 2}, // raw command byte 2: BIND
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) { rig.run(t, in) })
}

// loopbackRig is one server and its echo targets, shared by the inputs of
// a fuzzing process, which run one after another.
type loopbackRig struct {
	srv      *Server
	addr     string
	tcpEcho  netip.AddrPort
	udpEcho  netip.AddrPort
	metrics  *metrics.Metrics
	logCheck *logWatch
}

func newLoopbackRig(tb testing.TB) *loopbackRig {
	h, err := bcrypt.GenerateFromPassword([]byte(alicePass), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	store, err := auth.NewStore([]auth.Account{{Name: "alice", Hash: string(h)}, {Name: "bob", Password: bobPass}}, auth.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	lo := Egress{Interfaces: []string{"lo"}}
	m := metrics.New()
	st := &Settings{
		Auth:             store,
		Users:            map[string]User{"alice": {Egress: lo}, "bob": {Egress: lo}},
		Policy:           policy.New(notLoopback(), false),
		Metrics:          m,
		HandshakeTimeout: 2 * time.Second,
		ConnectTimeout:   time.Second,
		BindTimeout:      2 * time.Second,
		IdleTimeout:      10 * time.Second,
		UDP:              UDPSettings{MaxAssociations: 16, MaxDatagram: 2048, ReplyFilter: FilterAddressPort},
	}
	w := &logWatch{}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	srv := New(zap.New(zapcore.NewCore(enc, w, zapcore.DebugLevel)), st)
	return &loopbackRig{
		srv: srv, addr: serveLoopback(tb, srv), metrics: m, logCheck: w,
		tcpEcho: echoServer(tb), udpEcho: udpEchoServer(tb),
	}
}

// notLoopback is a deny list of every address but 127.0.0.0/8 and ::1:
// the complement of each, one prefix per bit.
func notLoopback() []netip.Prefix {
	var out []netip.Prefix
	complement := func(a netip.Addr, bits int) {
		b := a.AsSlice()
		for k := range bits {
			c := bytes.Clone(b)
			c[k/8] ^= 0x80 >> (k % 8)
			ip, _ := netip.AddrFromSlice(c)
			out = append(out, netip.PrefixFrom(ip, k+1).Masked())
		}
	}
	complement(netip.MustParseAddr("127.0.0.0"), 8)
	complement(netip.IPv6Loopback(), 128)
	return out
}

// logWatch is the rig's log output: it keeps nothing (a long fuzzing run
// would fill memory) but remembers whether any line was unprintable or
// told of a panic.
type logWatch struct {
	bad atomic.Value // string: the first offending line
}

func (w *logWatch) Write(p []byte) (int, error) {
	line := string(bytes.TrimSuffix(p, []byte("\n")))
	if nonPrintable(line) >= 0 || bytes.Contains(p, []byte("panic in a connection goroutine")) {
		w.bad.CompareAndSwap(nil, line)
	}
	return len(p), nil
}

func (w *logWatch) Sync() error { return nil }

// udpEchoServer answers every datagram with itself, until cleanup.
func udpEchoServer(tb testing.TB) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], src)
		}
	})
	tb.Cleanup(func() { c.Close(); wg.Wait() })
	return addrPortOfUDP(c.LocalAddr())
}

// fuzzInput hands out the input's bytes; past the end it gives zeros.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *fuzzInput) bytes(n int) []byte {
	n = min(n, len(in.b))
	out := in.b[:n]
	in.b = in.b[n:]
	return out
}

// Target encodings the input can choose (bits 4-6 of its first byte).
const (
	tgtEcho    = iota // the TCP echo (the UDP echo for datagrams)
	tgtUDPEcho        // the UDP echo's address, for any command
	tgtName           // "localhost" and the echo's port
	tgtMapped         // ::ffff:127.0.0.1 and the echo's port
	tgtRaw4           // four address bytes and a port from the input
	tgtRaw6           // sixteen address bytes and a port from the input
	tgtZero           // 0.0.0.0:0
	tgtNAT64          // 64:ff9b::7f00:1, the echo through NAT64: denied
)

// target is what the request names, encoded, and what the policy makes
// of it.
type target struct {
	enc     []byte // ATYP, address, port
	ip      netip.Addr
	port    uint16
	allowed bool // the policy lets the address through
	echo    bool // it is the TCP echo
}

func (rig *loopbackRig) target(sel byte, in *fuzzInput) target {
	ip4 := func(a netip.Addr, port uint16) []byte { return appendAddr(nil, netip.AddrPortFrom(a, port)) }
	ip6 := func(a netip.Addr, port uint16) []byte {
		b := append([]byte{atypIPv6}, a.AsSlice()...)
		return append(b, byte(port>>8), byte(port))
	}
	echo := rig.tcpEcho
	switch sel {
	case tgtEcho:
		return target{enc: ip4(echo.Addr(), echo.Port()), ip: echo.Addr(), port: echo.Port(), allowed: true, echo: true}
	case tgtUDPEcho:
		u := rig.udpEcho
		return target{enc: ip4(u.Addr(), u.Port()), ip: u.Addr(), port: u.Port(), allowed: true}
	case tgtName:
		name := "localhost"
		enc := append([]byte{atypDomain, byte(len(name))}, name...)
		return target{enc: append(enc, byte(echo.Port()>>8), byte(echo.Port())), ip: echo.Addr(), port: echo.Port(), allowed: true, echo: true}
	case tgtMapped:
		m := netip.AddrFrom16(echo.Addr().As16())
		return target{enc: ip6(m, echo.Port()), ip: echo.Addr(), port: echo.Port(), allowed: true, echo: true}
	case tgtRaw4, tgtRaw6:
		n := 4
		if sel == tgtRaw6 {
			n = 16
		}
		raw := make([]byte, n)
		copy(raw, in.bytes(n))
		ip, _ := netip.AddrFromSlice(raw)
		port := uint16(in.byte())<<8 | uint16(in.byte())
		u := ip.Unmap()
		allowed := u.IsLoopback() && (u.Is4() || u == netip.IPv6Loopback())
		if allowed {
			// Only the echo's port: the machine's other loopback
			// services (other tests' servers) are not the fuzzer's.
			port = echo.Port()
		}
		enc := ip4(ip, port)
		if sel == tgtRaw6 {
			enc = ip6(ip, port)
		}
		return target{enc: enc, ip: u, port: port, allowed: allowed, echo: allowed && u == echo.Addr()}
	case tgtZero:
		return target{enc: ip4(netip.IPv4Unspecified(), 0), ip: netip.IPv4Unspecified()}
	default: // tgtNAT64
		n := netip.MustParseAddr("64:ff9b::7f00:1")
		return target{enc: ip6(n, echo.Port()), ip: n, port: echo.Port()}
	}
}

// run plays one input against the rig.
func (rig *loopbackRig) run(t *testing.T, raw []byte) {
	in := &fuzzInput{b: raw}
	flags := in.byte()
	c, err := net.DialTimeout("tcp", rig.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Close()
		rig.settle(t)
	}()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if !rig.login(t, c, flags&3) {
		return
	}
	cmd := [4]byte{cmdConnect, cmdBind, cmdUDPAssociate, 0}[flags>>2&3]
	if flags>>2&3 == 3 {
		cmd = in.byte()
	}
	pipelined := flags&0x80 != 0
	switch cmd {
	case cmdConnect:
		rig.connect(t, c, rig.target(flags>>4&7, in), pipelined, in.b)
	case cmdBind:
		rig.bind(t, c, rig.target(flags>>4&7, in), in.b)
	case cmdUDPAssociate:
		rig.udp(t, c, pipelined, in)
	default:
		req := append([]byte{5, cmd, 0}, rig.target(flags>>4&7, in).enc...)
		c.Write(req)
		if rep, _, err := readFuzzReply(c); err != nil || rep != RepCommandUnsupported {
			t.Fatalf("command %#x: reply %#x, %v; want %#x", cmd, rep, err, RepCommandUnsupported)
		}
		expectEOF(t, c)
	}
}

// login runs the greeting and authentication the input chose: alice, bob,
// a wrong password (refused), or only "no authentication" offered (0xFF).
// It reports whether the connection may go on.
func (rig *loopbackRig) login(t *testing.T, c net.Conn, mode byte) bool {
	if mode == 3 {
		c.Write([]byte{5, 1, methodNoAuth})
		expectBytes(t, c, 5, methodNoAccept)
		expectEOF(t, c)
		return false
	}
	c.Write([]byte{5, 1, methodUserPass})
	expectBytes(t, c, 5, methodUserPass)
	user, pass := [3]string{"alice", "bob", "alice"}[mode], [3]string{alicePass, bobPass, "wrong"}[mode]
	msg := append([]byte{1, byte(len(user))}, user...)
	c.Write(append(append(msg, byte(len(pass))), pass...))
	if mode == 2 {
		expectBytes(t, c, 1, authStatusFailed)
		expectEOF(t, c)
		return false
	}
	expectBytes(t, c, 1, authStatusOK)
	return true
}

// connect checks a CONNECT: refused by the policy, or relayed to the echo
// with the data intact (sent before or after the reply), or failed for
// any other allowed target with a reply that says why.
func (rig *loopbackRig) connect(t *testing.T, c net.Conn, tgt target, pipelined bool, data []byte) {
	req := append([]byte{5, cmdConnect, 0}, tgt.enc...)
	if pipelined {
		req = append(req, data...)
	}
	c.Write(req)
	rep, bnd, err := readFuzzReply(c)
	switch {
	case err != nil:
		t.Fatalf("CONNECT %v: %v", tgt.ip, err)
	case !tgt.allowed:
		if rep != RepNotAllowed {
			t.Fatalf("CONNECT to %v (not loopback): reply %#x, want %#x", tgt.ip, rep, RepNotAllowed)
		}
		expectEOF(t, c)
		return
	case tgt.echo && rep != RepSucceeded:
		t.Fatalf("CONNECT to the echo as %x: reply %#x", tgt.enc, rep)
	case rep == RepSucceeded:
		if !bnd.Addr().IsLoopback() {
			t.Fatalf("CONNECT BND %v: want the loopback socket's address", bnd)
		}
	default:
		if rep != RepConnectionRefused && rep != RepHostUnreachable && rep != RepNetworkUnreachable && rep != RepTTLExpired {
			t.Fatalf("CONNECT to %v:%d: reply %#x", tgt.ip, tgt.port, rep)
		}
		expectEOF(t, c)
		return
	}
	if !tgt.echo {
		return // some other loopback service; hang up
	}
	if !pipelined {
		c.Write(data)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo through CONNECT: got %d bytes (%v), want the %d sent back", len(got), err, len(data))
	}
}

// bind checks a BIND: refused for a peer the policy denies; otherwise the
// first reply names a loopback socket, a peer connecting from 127.0.0.1
// is accepted when the client named it (or any), and data flows both ways.
func (rig *loopbackRig) bind(t *testing.T, c net.Conn, tgt target, data []byte) {
	c.Write(append([]byte{5, cmdBind, 0}, tgt.enc...))
	rep, bnd, err := readFuzzReply(c)
	if err != nil {
		t.Fatalf("BIND first reply: %v", err)
	}
	anyPeer := tgt.ip.IsUnspecified()
	if !tgt.allowed && !anyPeer {
		if rep != RepNotAllowed {
			t.Fatalf("BIND naming %v (not loopback): reply %#x, want %#x", tgt.ip, rep, RepNotAllowed)
		}
		expectEOF(t, c)
		return
	}
	if rep != RepSucceeded || !bnd.Addr().IsLoopback() {
		if rep == RepSucceeded || tgt.ip.Is4() {
			t.Fatalf("BIND naming %v: first reply %#x %v, want success on loopback", tgt.ip, rep, bnd)
		}
		expectEOF(t, c) // ::1 named: no IPv4 address to listen on is fine
		return
	}
	peer, err := net.DialTimeout("tcp", bnd.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("BIND peer connect to %v: %v", bnd, err)
	}
	defer peer.Close()
	peer.SetDeadline(time.Now().Add(20 * time.Second))
	named := anyPeer || tgt.ip == netip.MustParseAddr("127.0.0.1") || tgt.enc[0] == atypDomain
	rep, from, err := readFuzzReply(c)
	if !named {
		// A peer the client did not name is closed; the wait times out.
		if err != nil || rep != RepTTLExpired {
			t.Fatalf("BIND naming %v, peer from 127.0.0.1: second reply %#x, %v; want %#x", tgt.ip, rep, err, RepTTLExpired)
		}
		return
	}
	if err != nil || rep != RepSucceeded || from != peer.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("BIND second reply %#x %v, %v; want success naming the peer %v", rep, from, err, peer.LocalAddr())
	}
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(peer)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("BIND client to peer: got %d bytes (%v), want %d", len(got), err, len(data))
	}
	peer.Write(data)
	peer.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("BIND peer to client: got %d bytes (%v), want %d", len(got), err, len(data))
	}
}

// udp checks an association: the input's datagrams are sent (to the UDP
// echo by address or by "localhost", to raw addresses, or as raw bytes
// whose header names no other name) and every one addressed to the echo
// comes back once, with a header naming the echo; nothing else comes back.
func (rig *loopbackRig) udp(t *testing.T, c net.Conn, anyPort bool, in *fuzzInput) {
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	from := addrPortOfUDP(u.LocalAddr())
	if anyPort {
		from = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	}
	c.Write(append([]byte{5, cmdUDPAssociate, 0}, appendAddr(nil, from)...))
	rep, relay, err := readFuzzReply(c)
	if err != nil || rep != RepSucceeded || !relay.Addr().IsLoopback() {
		t.Fatalf("UDP ASSOCIATE: reply %#x %v, %v", rep, relay, err)
	}
	echo := rig.udpEcho
	want := map[string]int{}
	sent := 0
	for len(in.b) > 0 && sent < 16 {
		sel, n := in.byte(), int(in.byte())
		data := in.bytes(n)
		var dgram []byte
		switch sel % 4 {
		case 0:
			dgram = append(append([]byte{0, 0, 0}, appendAddr(nil, echo)...), data...)
		case 1:
			name := "localhost"
			dgram = append([]byte{0, 0, 0, atypDomain, byte(len(name))}, name...)
			dgram = append(append(dgram, byte(echo.Port()>>8), byte(echo.Port())), data...)
		case 2:
			a := make([]byte, 4)
			copy(a, data)
			dgram = append([]byte{0, 0, 0, atypIPv4}, a...)
			dgram = append(dgram, byte(echo.Port()>>8), byte(echo.Port()))
			dgram = append(dgram, data...)
		case 3:
			dst, _, err := parseUDPHeader(data)
			if err == nil && dst.Name != "" && dst.Name != "localhost" {
				continue // would be a DNS query
			}
			if err == nil && dst.IP.Unmap().IsLoopback() && dst.Port != echo.Port() {
				continue // another test's loopback service, perhaps
			}
			dgram = data
		}
		dst, payload, err := parseUDPHeader(dgram)
		if err == nil && dst.Port == echo.Port() && len(payload) <= 2048 &&
			(dst.IP == echo.Addr() || dst.Name == "localhost") {
			want[string(payload)]++
		}
		if _, err := u.WriteToUDPAddrPort(dgram, relay); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	expected := 0
	for _, n := range want {
		expected += n
	}
	buf := make([]byte, 65535)
	for got := 0; got < expected; got++ {
		u.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("UDP: %d of %d echoes back, then %v", got, expected, err)
		}
		src, payload, err := parseUDPHeader(buf[:n])
		if err != nil || src.Name != "" || netip.AddrPortFrom(src.IP, src.Port) != echo {
			t.Fatalf("UDP reply header %x: from %v, %v; want the echo %v", buf[:min(n, 24)], src, err, echo)
		}
		if want[string(payload)] == 0 {
			t.Fatalf("UDP reply %q: not a payload sent to the echo", payload)
		}
		want[string(payload)]--
	}
	u.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, _, err := u.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("UDP: unexpected extra datagram % x", buf[:min(n, 32)])
	}
}

// settle waits until the server has ended the connection: every
// goroutine and slot of it given back. It also fails the input if the
// log had an unprintable line or a recovered panic.
func (rig *loopbackRig) settle(t *testing.T) {
	deadline := time.Now().Add(10 * time.Second)
	for rig.srv.ActiveConns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ActiveConns = %d 10s after the client hung up", rig.srv.ActiveConns())
		}
		time.Sleep(time.Millisecond)
	}
	if bad := rig.logCheck.bad.Load(); bad != nil {
		t.Fatalf("log line: %q", bad)
	}
}

// readFuzzReply reads a SOCKS5 reply, checking its framing.
func readFuzzReply(c net.Conn) (byte, netip.AddrPort, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, netip.AddrPort{}, err
	}
	if hdr[0] != socks5Version || hdr[2] != 0 {
		return 0, netip.AddrPort{}, fmt.Errorf("bad reply header % x", hdr)
	}
	a, err := readAddr(c, hdr[3])
	if err == nil && a.Name != "" {
		err = errors.New("reply carries a name")
	}
	return hdr[1], netip.AddrPortFrom(a.IP, a.Port), err
}

func expectBytes(t *testing.T, c net.Conn, want ...byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got % x (%v), want % x", got, err, want)
	}
}

// expectEOF checks that the server closes the connection with nothing
// more to say.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || (err != io.EOF && !isReset(err)) {
		t.Fatalf("want the server to close, got %d bytes % x, %v", n, b[:n], err)
	}
}
