package socks

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	// Every server a test starts is closed in its cleanup; nothing it
	// started may outlive it.
	goleak.VerifyTestMain(m)
}

// testEnv is a running server on loopback with an observed logger.
type testEnv struct {
	srv  *Server
	addr string
	logs *observer.ObservedLogs
}

const (
	alicePass = "alice-pw"
	bobPass   = "bob-pw"
)

// testSettings has alice (bcrypt) and bob (plaintext) egressing by "lo", and
// carol on an interface that does not exist. The policy allows loopback
// because every target in these tests is on loopback.
func testSettings(tb testing.TB) *Settings {
	tb.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(alicePass), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	store, err := auth.NewStore([]auth.Account{
		{Name: "alice", Hash: string(h)},
		{Name: "bob", Password: bobPass},
		{Name: "carol", Password: "carol-pw"},
	}, auth.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return &Settings{
		Auth: store,
		Users: map[string]User{
			"alice": {Egress: Egress{Interfaces: []string{"lo"}}},
			"bob":   {Egress: Egress{Interfaces: []string{"lo"}}},
			"carol": {Egress: Egress{Interfaces: []string{"nosuch0"}}},
		},
		Policy:           policy.New(nil, false),
		HandshakeTimeout: 2 * time.Second,
		ConnectTimeout:   2 * time.Second,
		IdleTimeout:      time.Minute,
	}
}

func startServer(tb testing.TB, st *Settings) *testEnv {
	tb.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	srv := New(zap.New(core), st)
	return &testEnv{srv: srv, addr: serveLoopback(tb, srv), logs: logs}
}

// serveLoopback runs srv on a loopback port until cleanup and returns the
// address.
func serveLoopback(tb testing.TB, srv *Server) string {
	tb.Helper()
	// As the daemon listens: keepalive is the server's choice per flow.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	tb.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			tb.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// echoServer accepts connections on loopback and echoes until EOF, then
// half-closes. It returns its address.
func echoServer(tb testing.TB) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// rawClient speaks SOCKS5 byte by byte so tests can assert exact replies.
type rawClient struct {
	tb testing.TB
	c  net.Conn
}

func dialRaw(tb testing.TB, addr string) *rawClient {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tb.Cleanup(func() { c.Close() })
	return &rawClient{tb: tb, c: c}
}

func (r *rawClient) send(b ...byte) {
	r.tb.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.tb.Fatalf("write: %v", err)
	}
}

func (r *rawClient) expect(want ...byte) {
	r.tb.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r.c, got); err != nil {
		r.tb.Fatalf("read %d bytes: %v (want % x)", len(want), err, want)
	}
	if !bytes.Equal(got, want) {
		r.tb.Fatalf("got % x, want % x", got, want)
	}
}

// expectClosed asserts the server closes the connection with nothing more
// to read.
func (r *rawClient) expectClosed() {
	r.tb.Helper()
	var b [1]byte
	n, err := r.c.Read(b[:])
	if n != 0 || (err != io.EOF && !errors.Is(err, net.ErrClosed) && !isReset(err)) {
		r.tb.Fatalf("want close, got %d bytes (% x), err %v", n, b[:n], err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// login does greeting and RFC 1929 authentication and checks success.
func (r *rawClient) login(user, pass string) {
	r.tb.Helper()
	r.send(5, 1, methodUserPass)
	r.expect(5, methodUserPass)
	msg := append([]byte{1, byte(len(user))}, user...)
	msg = append(append(msg, byte(len(pass))), pass...)
	r.send(msg...)
	r.expect(1, 0)
}

// connect sends a CONNECT for dst and returns the reply code and BND.
func (r *rawClient) connect(dst netip.AddrPort) (byte, netip.AddrPort) {
	r.tb.Helper()
	r.send(append([]byte{5, cmdConnect, 0}, appendAddr(nil, dst)...)...)
	return r.readReply()
}

func (r *rawClient) connectName(name string, port uint16) (byte, netip.AddrPort) {
	r.tb.Helper()
	msg := append([]byte{5, cmdConnect, 0, atypDomain, byte(len(name))}, name...)
	r.send(append(msg, byte(port>>8), byte(port))...)
	return r.readReply()
}

func (r *rawClient) readReply() (byte, netip.AddrPort) {
	r.tb.Helper()
	var hdr [3]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		r.tb.Fatalf("read reply: %v", err)
	}
	if hdr[0] != 5 || hdr[2] != 0 {
		r.tb.Fatalf("bad reply header % x", hdr)
	}
	var atyp [1]byte
	io.ReadFull(r.c, atyp[:])
	a, err := readAddr(r.c, atyp[0])
	if err != nil {
		r.tb.Fatalf("reply address: %v", err)
	}
	return hdr[1], netip.AddrPortFrom(a.IP, a.Port)
}

// waitFor polls cond for up to d.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			tb.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// flowLines returns the logged "flow" entries.
func (e *testEnv) flowLines() []observer.LoggedEntry {
	return e.logs.FilterMessage("flow").All()
}
