package socks

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/policy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/bcrypt"
)

// reloaded returns settings as a reload would build them from the file
// base builds, with the user drop removed (from the store and the egress
// map) and, when deny is not nil, a new deny list.
func reloaded(tb testing.TB, base func(testing.TB) *Settings, drop string, deny []netip.Prefix) *Settings {
	tb.Helper()
	nst := base(tb)
	users := nst.Users
	// alice keeps a bcrypt hash of the lowest cost, as in testSettings:
	// the store's dummy check for unknown users takes the highest cost
	// configured (the default cost without any hash), too slow for a
	// loaded machine running -race.
	h, err := bcrypt.GenerateFromPassword([]byte(alicePass), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	accounts := []auth.Account{{Name: "bob", Password: bobPass}, {Name: "carol", Password: "carol-pw"}, {Name: "alice", Hash: string(h)}}
	nst.Users = make(map[string]User)
	var keep []auth.Account
	for _, a := range accounts {
		if a.Name != drop {
			keep = append(keep, a)
			nst.Users[a.Name] = users[a.Name]
		}
	}
	store, err := auth.NewStore(keep, auth.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	nst.Auth = store
	if deny != nil {
		nst.Policy = policy.New(deny, false)
	}
	return nst
}

// slowSettings are testSettings with a handshake timeout that a loaded
// machine running -race cannot reach while a test reloads mid-handshake.
func slowSettings(tb testing.TB) *Settings {
	st := testSettings(tb)
	st.HandshakeTimeout = time.Minute
	return st
}

var denyLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// flowLine returns the context of the last flow line of user, or nil.
func (e *testEnv) flowLine(user string) map[string]any {
	var last map[string]any
	for _, l := range e.flowLines() {
		if f := l.ContextMap(); f["user"] == user {
			last = f
		}
	}
	return last
}

// TestReloadRemovesUserInHandshake: a connection accepted before a reload
// that removes bob cannot use bob afterwards, whichever step of the
// handshake it had reached: nothing sent, greeting sent (the password is
// refused), or logged in (the request gets 0x02, logged user_removed).
func TestReloadRemovesUserInHandshake(t *testing.T) {
	echo := echoServer(t)
	greet := func(r *rawClient) {
		r.send(5, 1, methodUserPass)
		r.expect(5, methodUserPass)
	}
	creds := func(r *rawClient) {
		msg := append([]byte{1, 3}, "bob"...)
		r.send(append(append(msg, byte(len(bobPass))), bobPass...)...)
	}
	tests := []struct {
		name   string
		before func(r *rawClient) // before the reload
		after  func(t *testing.T, r *rawClient, env *testEnv)
	}{
		{"accepted only", func(*rawClient) {}, func(t *testing.T, r *rawClient, _ *testEnv) {
			greet(r)
			creds(r)
			r.expect(1, 1)
		}},
		{"greeting sent", greet, func(t *testing.T, r *rawClient, _ *testEnv) {
			creds(r)
			r.expect(1, 1)
		}},
		{"logged in", func(r *rawClient) { greet(r); creds(r); r.expect(1, 0) }, func(t *testing.T, r *rawClient, env *testEnv) {
			if rep, _ := r.connect(echo); rep != RepNotAllowed {
				t.Fatalf("CONNECT after bob's removal: reply %#x, want %#x", rep, RepNotAllowed)
			}
			waitFor(t, 2*time.Second, "bob's flow line", func() bool { return env.flowLine("bob") != nil })
			if f := env.flowLine("bob"); f["outcome"] != outcomeRemoved {
				t.Errorf("flow line outcome %v, want %s", f["outcome"], outcomeRemoved)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := slowSettings(t)
			next := reloaded(t, slowSettings, "bob", nil) // built first: it costs a bcrypt
			env := startServer(t, st)
			r := dialRaw(t, env.addr)
			tt.before(r)
			waitFor(t, 2*time.Second, "connection accepted", func() bool { return env.srv.ActiveConns() == 1 })
			env.srv.Update(next)
			env.srv.CloseUsers(map[string]bool{"bob": true})
			tt.after(t, r, env)
			// alice, in the same file, is untouched.
			a := dialRaw(t, env.addr)
			a.login("alice", alicePass)
			if rep, _ := a.connect(echo); rep != RepSucceeded {
				t.Fatalf("alice after the reload: reply %#x", rep)
			}
		})
	}
}

// TestReloadDenyInHandshake: a deny entry added by a reload refuses the
// request of a client that logged in before it.
func TestReloadDenyInHandshake(t *testing.T) {
	echo := echoServer(t)
	st := slowSettings(t)
	next := reloaded(t, slowSettings, "", denyLoopback)
	env := startServer(t, st)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	env.srv.Update(next)
	if rep, _ := r.connect(echo); rep != RepNotAllowed {
		t.Fatalf("CONNECT to %s after the reload denied it: reply %#x, want %#x", echo, rep, RepNotAllowed)
	}
}

// TestReloadDenyRunningUDP: an association opened before a reload that
// denies its destination relays nothing more there, and counts the drops.
func TestReloadDenyRunningUDP(t *testing.T) {
	st := udpSettings(t)
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "alice", alicePass)
	u.send(echo.addr(), []byte("before"))
	if got := <-echo.got; string(got) != "before" {
		t.Fatalf("echo got %q", got)
	}
	env.srv.Update(reloaded(t, udpSettings, "", denyLoopback))
	for range 5 {
		u.send(echo.addr(), []byte("after"))
	}
	echo.assertNothing(t, 300*time.Millisecond)
	u.ctl.c.Close()
	line := waitAssocLog(t, env)
	if d, _ := line["dropped"].(map[string]any); d["denied"] != int64(5) {
		t.Errorf("association dropped %v, want denied: 5", line["dropped"])
	}
}

// TestReloadClosesRemovedUDPAndBind: CloseUsers, which the daemon calls
// after a reload with reload_closes_removed, ends the removed user's UDP
// association and BIND wait too, each logged user_removed.
func TestReloadClosesRemovedUDPAndBind(t *testing.T) {
	st := udpSettings(t)
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "bob", bobPass)
	u.send(echo.addr(), []byte("x"))
	<-echo.got
	b := dialRaw(t, env.addr)
	b.login("bob", bobPass)
	if rep, _ := b.bind(netip.MustParseAddrPort("127.0.0.1:21")); rep != RepSucceeded {
		t.Fatalf("BIND first reply %#x", rep)
	}
	waitFor(t, 2*time.Second, "both flows active", func() bool {
		env.srv.mu.Lock()
		defer env.srv.mu.Unlock()
		n := 0
		for sc := range env.srv.conns {
			if sc.active && sc.user == "bob" {
				n++
			}
		}
		return n == 2
	})
	env.srv.Update(reloaded(t, udpSettings, "bob", nil))
	if n := env.srv.CloseUsers(map[string]bool{"bob": true}); n != 2 {
		t.Fatalf("CloseUsers closed %d flows, want 2 (the association and the BIND wait)", n)
	}
	for _, c := range []net.Conn{u.ctl.c, b.c} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
	}
	u.ctl.expectClosed()
	b.expectClosed()
	line := waitAssocLog(t, env)
	if line["outcome"] != outcomeRemoved {
		t.Errorf("association outcome %v, want %s", line["outcome"], outcomeRemoved)
	}
	waitFor(t, 5*time.Second, "BIND flow line", func() bool { return env.flowLine("bob") != nil })
	f := env.flowLine("bob")
	if f["outcome"] != outcomeRemoved {
		t.Errorf("BIND flow outcome %v, want %s", f["outcome"], outcomeRemoved)
	}
	for _, l := range env.flowLines() {
		if l.ContextMap()["user"] == "bob" && l.Level < zapcore.WarnLevel {
			t.Errorf("cut flow logged at %v, want warn", l.Level)
		}
	}
}

// TestReloadRunningTCPKeepsTarget documents the rule for running TCP
// flows: a reload that denies their target does not cut them (their
// destination was judged when they started); the next request is refused.
func TestReloadRunningTCPKeepsTarget(t *testing.T) {
	echo := echoServer(t)
	st := testSettings(t)
	env := startServer(t, st)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("CONNECT reply %#x", rep)
	}
	env.srv.Update(reloaded(t, testSettings, "", denyLoopback))
	r.send('p', 'i', 'n', 'g')
	r.expect('p', 'i', 'n', 'g')
	n := dialRaw(t, env.addr)
	n.login("alice", alicePass)
	if rep, _ := n.connect(echo); rep != RepNotAllowed {
		t.Fatalf("new CONNECT after the reload: reply %#x, want %#x", rep, RepNotAllowed)
	}
}

// TestBeginFlowAfterReload: the last check before a flow starts, under the
// server's lock, refuses a user the current settings lack. A reload stores
// its settings before it cuts the removed users' flows, so a flow of bob
// that authenticated just before the reload either started before the cut
// (and is cut) or is refused here.
func TestBeginFlowAfterReload(t *testing.T) {
	st := testSettings(t)
	srv := New(zap.NewNop(), st)
	defer srv.Close()
	sc := &serverConn{srv: srv, st: st}
	srv.Update(reloaded(t, testSettings, "bob", nil))
	if err := srv.beginFlow(sc, "bob"); !errors.Is(err, ErrUserRemoved) {
		t.Fatalf("beginFlow for a removed user: %v, want ErrUserRemoved", err)
	}
	if sc.active {
		t.Fatal("the refused flow was marked active")
	}
	if err := srv.beginFlow(sc, "alice"); err != nil {
		t.Fatalf("beginFlow for alice: %v", err)
	}
}
