package socks

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// startNamedServer serves st on a loopback listener through
// ServeListener, as the daemon does, with lis as that listener's settings
// (named in every log line). It returns the environment; env.addr is the
// listener's address, which is also its settings key.
func startNamedServer(tb testing.TB, st *Settings, lis *Listener) *testEnv {
	tb.Helper()
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	st.Listeners = map[string]*Listener{addr: lis}
	core, logs := observer.New(zapcore.DebugLevel)
	srv := New(zap.New(core), st)
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ln, addr) }()
	tb.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			tb.Errorf("ServeListener returned %v, want ErrServerClosed", err)
		}
	})
	return &testEnv{srv: srv, addr: addr, logs: logs}
}

// TestLogFieldsEveryLine drives one connection to each kind of log line a
// connection can produce and asserts that every line the server wrote
// names the listener (address and name), and that udp association names
// the local address of its outbound socket.
func TestLogFieldsEveryLine(t *testing.T) {
	st := udpSettings(t)
	st.Policy = policy.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}, false)
	st.Limits.AuthFail = AuthFailLimit{Max: 2, Window: time.Minute, Cooldown: time.Minute}
	st.Limits.MaxHandshakesPerIP = 2
	env := startNamedServer(t, st, &Listener{Name: "front", AllowClients: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.2/32"),
		netip.MustParsePrefix("127.0.0.4/32"), netip.MustParsePrefix("127.0.0.5/32"),
	}})
	echo := echoServer(t)

	for _, tt := range []struct {
		msg string
		run func()
	}{
		{"flow", func() { // ok, then denied by policy
			r := dialRaw(t, env.addr)
			r.login("alice", alicePass)
			if rep, _ := r.connect(echo); rep != RepSucceeded {
				t.Fatalf("CONNECT reply %#x", rep)
			}
			r.c.Close()
			r = dialRaw(t, env.addr)
			r.login("alice", alicePass)
			if rep, _ := r.connect(netip.MustParseAddrPort("127.0.0.9:80")); rep != RepNotAllowed {
				t.Fatalf("denied CONNECT reply %#x", rep)
			}
		}},
		{"handshake failed", func() {
			r := dialRaw(t, env.addr)
			r.send(4, 1, 0)
			r.expectClosed()
		}},
		{"authentication failed", func() {
			for range 2 {
				r := dialFrom(t, "127.0.0.2", env.addr)
				if s, _ := r.tryLogin("alice", "wrong"); s == 0 {
					t.Fatal("wrong password accepted")
				}
			}
		}},
		{"client blocked after failed authentications", func() {}}, // by the second failure above
		{"authentication refused", func() {
			r := dialFrom(t, "127.0.0.2", env.addr)
			r.tryLogin("alice", alicePass)
		}},
		{"client not in allow_clients; closed", func() {
			r := dialFrom(t, "127.0.0.3", env.addr)
			r.expectClosed()
		}},
		{"connection refused: client has too many connections in handshake", func() {
			waitFor(t, 5*time.Second, "earlier connections closed", func() bool { return env.srv.ActiveConns() == 0 })
			// Two handshakes whose passwords wait for their check
			// cannot be evicted: the third connection is refused.
			release := holdChecks(t, env.srv)
			hold := []*rawClient{heldLogin(t, "127.0.0.4", env.addr, "probe1"), heldLogin(t, "127.0.0.4", env.addr, "probe2")}
			waitProtected(t, env.srv, "127.0.0.4", 2)
			dialFrom(t, "127.0.0.4", env.addr).expectClosed()
			release()
			for _, r := range hold {
				r.c.Close()
			}
		}},
		{"handshake closed to make room for a new connection", func() {
			waitFor(t, 5*time.Second, "earlier connections closed", func() bool { return env.srv.ActiveConns() == 0 })
			old := dialFrom(t, "127.0.0.4", env.addr)
			dialFrom(t, "127.0.0.4", env.addr)
			dialFrom(t, "127.0.0.4", env.addr)
			old.expectClosed()
		}},
		{"BIND: connection from an address the client did not name; closed", func() {
			r := dialRaw(t, env.addr)
			r.login("alice", alicePass)
			rep, bnd := r.bind(netip.MustParseAddrPort("127.0.0.1:21"))
			if rep != RepSucceeded {
				t.Fatalf("BIND reply %#x", rep)
			}
			stranger, err := peerFrom(t, "127.0.0.5", bnd)
			if err != nil {
				t.Fatal(err)
			}
			stranger.SetReadDeadline(time.Now().Add(2 * time.Second))
			stranger.Read(make([]byte, 1))
			r.c.Close()
		}},
		{"udp association", func() {
			ue := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
			u := associate(t, env, "alice", alicePass)
			u.send(ue.addr(), []byte("ping"))
			if _, _, err := u.recv(2 * time.Second); err != nil {
				t.Fatal(err)
			}
			u.ctl.c.Close()
		}},
	} {
		t.Run(tt.msg, func(t *testing.T) {
			tt.run()
			waitFor(t, 5*time.Second, "log line "+tt.msg, func() bool { return env.logs.FilterMessage(tt.msg).Len() > 0 })
		})
	}
	// Lines of connections still ending (the BIND wait, say) come last.
	waitFor(t, 5*time.Second, "all connections closed", func() bool { return env.srv.ActiveConns() == 0 })
	for _, e := range env.logs.All() {
		m := e.ContextMap()
		if m["listener"] != env.addr || m["listener_name"] != "front" {
			t.Errorf("%q: listener %v, listener_name %v; want %s, front (line %v)", e.Message, m["listener"], m["listener_name"], env.addr, m)
		}
		if e.Message == "udp association" {
			// One address per outbound socket; the IPv4 one sent, so
			// its source address is known.
			l, _ := m["local"].(string)
			sent := false
			for a := range strings.SplitSeq(l, ",") {
				ap, err := netip.ParseAddrPort(a)
				if err != nil || ap.Port() == 0 {
					t.Errorf("udp association local %q: %q: %v", l, a, err)
				}
				sent = sent || ap.Addr() == netip.MustParseAddr("127.0.0.1")
			}
			if !sent {
				t.Errorf("udp association local %q lacks the source 127.0.0.1 of the datagrams sent", l)
			}
		}
	}
}
