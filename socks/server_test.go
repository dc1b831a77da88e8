package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/policy"
	"golang.org/x/net/proxy"
)

// TestConnectXNetProxy drives the server with golang.org/x/net/proxy, an
// independent SOCKS5 client, and checks data passes both ways.
func TestConnectXNetProxy(t *testing.T) {
	env := startServer(t, testSettings(t))
	echo := echoServer(t)
	for _, user := range []struct{ name, pass string }{{"alice", alicePass}, {"bob", bobPass}} {
		t.Run(user.name, func(t *testing.T) {
			d, err := proxy.SOCKS5("tcp", env.addr, &proxy.Auth{User: user.name, Password: user.pass}, &net.Dialer{Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.Dial("tcp", echo.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := []byte("hello through " + user.name)
			c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo: %q, %v", got, err)
			}
		})
	}
}

// TestReplyCodes asserts the exact reply for each way a CONNECT can fail.
func TestReplyCodes(t *testing.T) {
	st := testSettings(t)
	env := startServer(t, st)
	stDeny := testSettings(t)
	stDeny.Policy = policy.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, false)
	envDeny := startServer(t, stDeny)
	echo := echoServer(t)
	closedPort := closedLoopbackPort(t)

	tests := []struct {
		name string
		env  *testEnv
		user string
		pass string
		do   func(r *rawClient) (byte, netip.AddrPort)
		want byte
	}{
		{"ok ipv4", env, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) { return r.connect(echo) }, RepSucceeded},
		{"ok name resolving to loopback", env, "bob", bobPass, func(r *rawClient) (byte, netip.AddrPort) { return r.connectName("localhost", echo.Port()) }, RepSucceeded},
		{"refused", env, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) { return r.connect(closedPort) }, RepConnectionRefused},
		{"missing interface", env, "carol", "carol-pw", func(r *rawClient) (byte, netip.AddrPort) { return r.connect(echo) }, RepNetworkUnreachable},
		{"missing interface, name", env, "carol", "carol-pw", func(r *rawClient) (byte, netip.AddrPort) { return r.connectName("localhost", echo.Port()) }, RepNetworkUnreachable},
		{"denied loopback", envDeny, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) { return r.connect(echo) }, RepNotAllowed},
		{"denied mapped loopback", envDeny, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) {
			return r.connect(netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), echo.Port()))
		}, RepNotAllowed},
		{"denied name resolving to loopback", envDeny, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) { return r.connectName("localhost", echo.Port()) }, RepNotAllowed},
		{"bad domain", env, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) { return r.connectName("bad name", 80) }, RepHostUnreachable},
		{"unknown command", env, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) {
			r.send(5, 0x09, 0, 1, 127, 0, 0, 1, 0, 80)
			return r.readReply()
		}, RepCommandUnsupported},
		{"unknown address type", env, "alice", alicePass, func(r *rawClient) (byte, netip.AddrPort) {
			r.send(5, 1, 0, 0x05, 127, 0, 0, 1, 0, 80)
			return r.readReply()
		}, RepAddrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, tt.env.addr)
			r.login(tt.user, tt.pass)
			rep, bnd := tt.do(r)
			if rep != tt.want {
				t.Fatalf("reply %#x, want %#x", rep, tt.want)
			}
			if rep != RepSucceeded {
				if bnd != netip.AddrPortFrom(netip.IPv4Unspecified(), 0) {
					t.Errorf("failure reply BND = %v, want 0.0.0.0:0", bnd)
				}
				r.expectClosed()
				return
			}
			// BND is the outbound socket's local address: loopback, a
			// real port, and not the proxy's listening port.
			if !bnd.Addr().IsLoopback() || bnd.Port() == 0 || bnd.String() == tt.env.addr {
				t.Errorf("BND = %v, want the outbound local address", bnd)
			}
		})
	}
}

func closedLoopbackPort(tb testing.TB) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

func TestAuthNegotiation(t *testing.T) {
	env := startServer(t, testSettings(t))
	open := testSettings(t)
	open.Auth = nil
	envOpen := startServer(t, open)
	echo := echoServer(t)

	userPass := func(u, p string) []byte {
		b := append([]byte{1, byte(len(u))}, u...)
		return append(append(b, byte(len(p))), p...)
	}
	tests := []struct {
		name string
		env  *testEnv
		run  func(r *rawClient)
	}{
		{"no-auth offered to auth server", env, func(r *rawClient) { r.send(5, 1, 0); r.expect(5, 0xFF); r.expectClosed() }},
		{"zero methods", env, func(r *rawClient) { r.send(5, 0); r.expect(5, 0xFF); r.expectClosed() }},
		{"wrong password", env, func(r *rawClient) {
			r.send(5, 2, 0, 2)
			r.expect(5, 2)
			r.send(userPass("alice", "nope")...)
			r.expect(1, 1)
			r.expectClosed()
		}},
		{"unknown user", env, func(r *rawClient) {
			r.send(5, 1, 2)
			r.expect(5, 2)
			r.send(userPass("mallory", alicePass)...)
			r.expect(1, 1)
			r.expectClosed()
		}},
		{"empty user and password", env, func(r *rawClient) {
			r.send(5, 1, 2)
			r.expect(5, 2)
			r.send(1, 0, 0)
			r.expect(1, 1)
			r.expectClosed()
		}},
		{"wrong sub-negotiation version", env, func(r *rawClient) {
			r.send(5, 1, 2)
			r.expect(5, 2)
			r.send(5, 1, 'a', 1, 'b')
			r.expect(1, 1)
			r.expectClosed()
		}},
		{"socks4 client", env, func(r *rawClient) { r.send(4, 1, 0, 80, 127, 0, 0, 1, 0); r.expectClosed() }},
		{"open server takes no-auth", envOpen, func(r *rawClient) {
			r.send(5, 2, 2, 0)
			r.expect(5, 0)
			if rep, _ := r.connect(echo); rep != RepSucceeded {
				t.Fatalf("reply %#x", rep)
			}
		}},
		{"open server refuses user/pass only", envOpen, func(r *rawClient) { r.send(5, 1, 2); r.expect(5, 0xFF); r.expectClosed() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(dialRaw(t, tt.env.addr)) })
	}
}

// TestHalfClose: the client half-closes after sending; the upstream still
// answers and the answer arrives.
func TestHalfClose(t *testing.T) {
	env := startServer(t, testSettings(t))
	echo := echoServer(t)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("reply %#x", rep)
	}
	payload := bytes.Repeat([]byte("0123456789"), 100000) // 1 MB
	go func() {
		r.c.Write(payload)
		r.c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(r.c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, err %v; want %d identical bytes", len(got), err, len(payload))
	}
	waitFor(t, 2*time.Second, "flow log", func() bool { return len(env.flowLines()) == 1 })
	f := env.flowLines()[0].ContextMap()
	if f["bytes_up"] != int64(len(payload)) || f["bytes_down"] != int64(len(payload)) || f["outcome"] != outcomeOK {
		t.Fatalf("flow log %v", f)
	}
}

func TestIdleTimeout(t *testing.T) {
	st := testSettings(t)
	st.IdleTimeout = 300 * time.Millisecond
	env := startServer(t, st)
	echo := echoServer(t)

	t.Run("idle flow closed", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("alice", alicePass)
		r.connect(echo)
		start := time.Now()
		r.expectClosed()
		if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
			t.Fatalf("closed after %v, want about 300ms", el)
		}
	})
	t.Run("busy flow kept", func(t *testing.T) {
		r := dialRaw(t, env.addr)
		r.login("bob", bobPass)
		r.connect(echo)
		buf := make([]byte, 4)
		for i := 0; i < 10; i++ { // 10 x 100ms = 3 idle periods
			r.send('p', 'i', 'n', 'g')
			if _, err := io.ReadFull(r.c, buf); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	waitFor(t, 2*time.Second, "idle flow log", func() bool {
		for _, e := range env.flowLines() {
			if e.ContextMap()["outcome"] == outcomeIdle {
				return true
			}
		}
		return false
	})
}

func TestHandshakeTimeout(t *testing.T) {
	st := testSettings(t)
	st.HandshakeTimeout = 200 * time.Millisecond
	env := startServer(t, st)
	for _, tt := range []struct {
		name string
		send []byte
	}{{"silent", nil}, {"partial greeting", []byte{5, 2, 0}}} {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, env.addr)
			if tt.send != nil {
				r.send(tt.send...)
			}
			start := time.Now()
			r.expectClosed()
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("closed after %v", el)
			}
		})
	}
	waitFor(t, 2*time.Second, "connections gone", func() bool { return env.srv.ActiveConns() == 0 })
}

// TestFlowLog checks the one line per flow and that no password is logged
// anywhere.
func TestFlowLog(t *testing.T) {
	env := startServer(t, testSettings(t))
	echo := echoServer(t)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	_, bnd := r.connect(echo)
	r.send('x')
	r.expect('x')
	r.c.Close()
	bad := dialRaw(t, env.addr)
	bad.send(5, 1, 2)
	bad.expect(5, 2)
	bad.send(append(append([]byte{1, 5}, "alice"...), append([]byte{6}, "secret"...)...)...)
	bad.expect(1, 1)
	waitFor(t, 2*time.Second, "flow log", func() bool { return len(env.flowLines()) == 1 })
	f := env.flowLines()[0].ContextMap()
	want := map[string]any{
		"user": "alice", "target": echo.String(), "remote": echo.String(), "interface": "lo",
		"local": bnd.String(), "bytes_up": int64(1), "bytes_down": int64(1), "outcome": outcomeOK, "reply": uint8(0),
	}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("flow[%s] = %v (%T), want %v", k, f[k], f[k], v)
		}
	}
	for _, k := range []string{"client", "duration"} {
		if _, ok := f[k]; !ok {
			t.Errorf("flow log lacks %s", k)
		}
	}
	waitFor(t, 2*time.Second, "auth failure log", func() bool {
		return env.logs.FilterMessage("authentication failed").Len() == 1
	})
	for _, e := range env.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, alicePass) || strings.Contains(line, "secret") {
			t.Errorf("password in log: %s", line)
		}
	}
}

// TestShutdownGrace: Shutdown waits for a running flow, refuses new ones,
// and cuts the rest when its context ends.
func TestShutdownGrace(t *testing.T) {
	env := startServer(t, testSettings(t))
	echo := echoServer(t)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	r.connect(echo)
	waiting := dialRaw(t, env.addr) // connected, still in handshake

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- env.srv.Shutdown(ctx) }()
	waiting.expectClosed()
	// The running flow still works during the grace period.
	r.send('a')
	r.expect('a')
	if _, err := net.DialTimeout("tcp", env.addr, time.Second); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Shutdown did not return after its deadline")
	}
	r.expectClosed()
}

func TestReplyFor(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &net.OpError{Op: "connect", Err: errno}}
	}
	tests := []struct {
		name string
		err  error
		want byte
	}{
		{"policy", &policy.DeniedError{Reason: "x"}, RepNotAllowed},
		{"no interface", &bind.Error{Interface: "x", Err: bind.ErrNoInterface}, RepNetworkUnreachable},
		{"interface down", &bind.Error{Interface: "x", Err: bind.ErrInterfaceDown}, RepNetworkUnreachable},
		{"bind not permitted", &net.OpError{Op: "dial", Err: &bind.Error{Interface: "x", Err: syscall.EPERM}}, RepNetworkUnreachable},
		{"ENETUNREACH", opErr(syscall.ENETUNREACH), RepNetworkUnreachable},
		{"EHOSTUNREACH", opErr(syscall.EHOSTUNREACH), RepHostUnreachable},
		{"not found", &net.DNSError{Err: "no such host", IsNotFound: true}, RepHostUnreachable},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", IsTimeout: true}, RepHostUnreachable},
		{"ECONNREFUSED", opErr(syscall.ECONNREFUSED), RepConnectionRefused},
		{"ETIMEDOUT", opErr(syscall.ETIMEDOUT), RepTTLExpired},
		{"context deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), RepTTLExpired},
		{"other", errors.New("boom"), RepGeneralFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := replyFor(tt.err); got != tt.want {
				t.Fatalf("replyFor(%v) = %#x, want %#x", tt.err, got, tt.want)
			}
		})
	}
}

// TestCloseInterface: cutting an interface ends exactly the flows that
// leave by it, with outcome interface_lost.
func TestCloseInterface(t *testing.T) {
	st := testSettings(t)
	st.Users["bob"] = User{} // kernel routing: not on "lo"
	env := startServer(t, st)
	echo := echoServer(t)
	alice := dialRaw(t, env.addr)
	alice.login("alice", alicePass)
	alice.connect(echo)
	bob := dialRaw(t, env.addr)
	bob.login("bob", bobPass)
	bob.connect(echo)
	if n := env.srv.CloseInterface("lo"); n != 1 {
		t.Fatalf("CloseInterface closed %d flows, want 1", n)
	}
	alice.expectClosed()
	bob.send('b')
	bob.expect('b')
	waitFor(t, 2*time.Second, "flow log", func() bool { return len(env.flowLines()) == 1 })
	if f := env.flowLines()[0].ContextMap(); f["user"] != "alice" || f["outcome"] != outcomeIfaceLost {
		t.Fatalf("flow log %v", f)
	}
}

// TestEarlyData: a client that sends its whole handshake and its first
// data in one segment, without waiting for replies, gets every reply and
// the data reaches the target first, in order.
func TestEarlyData(t *testing.T) {
	st := testSettings(t)
	st.Auth = nil
	env := startServer(t, st)
	echo := echoServer(t)
	r := dialRaw(t, env.addr)
	msg := []byte{5, 1, methodNoAuth}
	msg = append(msg, append([]byte{5, cmdConnect, 0}, appendAddr(nil, echo)...)...)
	msg = append(msg, "early bytes"...)
	r.send(msg...)
	r.expect(5, methodNoAuth)
	if rep, _ := r.readReply(); rep != RepSucceeded {
		t.Fatalf("reply %#x", rep)
	}
	r.expect([]byte("early bytes")...)
	r.send('!')
	r.expect('!')
	r.c.Close()
	waitFor(t, 2*time.Second, "flow log", func() bool { return len(env.flowLines()) == 1 })
	if f := env.flowLines()[0].ContextMap(); f["bytes_up"] != int64(12) || f["bytes_down"] != int64(12) {
		t.Fatalf("flow log counts %v", f)
	}
}
