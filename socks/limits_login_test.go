package socks

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/semaphore"
)

// TestAuthParallelGuesses: 100 logins opened at once from one client IP,
// 99 with wrong passwords and, once the client is at its limit (failures
// and checks running), one with the right one. At most auth_fail_limit passwords may be checked (counted by
// the bad_credentials metric and by the CPU the burst cost, in units of
// one check measured before), none may succeed, every attempt gets a
// reply, and no more than maxChecksPerClient checks may run at once.
func TestAuthParallelGuesses(t *testing.T) {
	const (
		limit    = 10
		attempts = 100
	)
	st := costSettings(t, realisticCost())
	st.Limits.AuthFail = AuthFailLimit{Max: limit, MaxClient: 5 * limit, Window: time.Minute, Cooldown: time.Minute}
	st.HandshakeTimeout = time.Minute // the attempts wait their turn, on a busy machine
	env := startServer(t, st)

	// The CPU of one check, from another address (which keeps a
	// failure of its own: far under its limits).
	var unit []time.Duration
	for range 3 {
		r := dialFrom(t, "127.0.0.3", env.addr)
		c0 := cpuTime(t)
		if status, _ := r.tryLogin("alice", "calibrate"); status == 0 {
			t.Fatal("a wrong password was accepted")
		}
		unit = append(unit, cpuTime(t)-c0)
	}
	one := median(unit)

	peak := samplePeak(t, func() int64 { return env.srv.lim.checksRunning.Load() })
	before := metricValue(t, st.Metrics, "ifsocks_auth_failures_total", `reason="bad_credentials"`)
	var (
		wg       sync.WaitGroup
		sent     sync.WaitGroup
		accepted atomic.Int32
		answered atomic.Int32
	)
	c0 := cpuTime(t)
	login := func(pass string) {
		defer wg.Done()
		r := dialFrom(t, "127.0.0.2", env.addr)
		r.send(5, 1, methodUserPass)
		r.expect(5, methodUserPass)
		msg := append([]byte{1, 5}, "alice"...)
		msg = append(append(msg, byte(len(pass))), pass...)
		r.send(msg...)
		sent.Done()
		var b [2]byte
		if _, err := r.c.Read(b[:]); err == nil {
			answered.Add(1)
			if b[1] == authStatusOK {
				accepted.Add(1)
			}
		}
	}
	wg.Add(attempts)
	sent.Add(attempts - 1)
	for i := range attempts - 1 {
		go login(fmt.Sprintf("guess-%d", i))
	}
	sent.Wait()
	// The right password comes once the client is at its limit, with
	// failures and checks in flight (before the fix: once 10 had
	// failed, with the others still being checked).
	waitFor(t, 20*time.Second, "the client at its limit", func() bool {
		g := &env.srv.lim.guard
		g.mu.Lock()
		defer g.mu.Unlock()
		el := g.byKey[authKey{netip.MustParseAddr("127.0.0.2"), "alice", true}]
		return el != nil && el.Value.(*authEntry).fails+el.Value.(*authEntry).inflight >= limit
	})
	sent.Add(1)
	go login(alicePass)
	wg.Wait()
	used := cpuTime(t) - c0
	checked := metricValue(t, st.Metrics, "ifsocks_auth_failures_total", `reason="bad_credentials"`) - before
	blocked := metricValue(t, st.Metrics, "ifsocks_auth_failures_total", `reason="blocked"`)
	t.Logf("%d parallel logins (cost %d, one check %v CPU): %d passwords checked, %d refused unchecked, %d accepted, %d answered; burst CPU %v (%.1f checks); at most %d checks at once",
		attempts, realisticCost(), one, int(checked), int(blocked), accepted.Load(), answered.Load(), used, float64(used)/float64(one), peak())
	if accepted.Load() != 0 {
		t.Errorf("%d logins accepted, want none: the right password came after the client was at its limit", accepted.Load())
	}
	if checked > limit {
		t.Errorf("%v passwords checked, want at most auth_fail_limit %d", checked, limit)
	}
	if answered.Load() != attempts {
		t.Errorf("%d of %d attempts answered, want all", answered.Load(), attempts)
	}
	// Generous: the accepts, handshakes and replies of 100 connections
	// cost CPU too, but far less than the 89 checks more a broken limit
	// would run.
	if used > time.Duration(2*limit)*one {
		t.Errorf("the burst cost %v CPU, %.1f checks' worth; want at most %d", used, float64(used)/float64(one), 2*limit)
	}
	if p := peak(); p > maxChecksPerClient {
		t.Errorf("%d checks ran at once for one client, want at most %d", p, maxChecksPerClient)
	}
}

// TestAuthChecksBounded: with blocking off, 3 client IPs × 8 parallel
// logins with distinct wrong passwords run at most maxChecksPerClient
// checks at once per client and, with the server-wide bound, at most
// maxChecks in all; every attempt is answered.
func TestAuthChecksBounded(t *testing.T) {
	tests := []struct {
		name      string
		serverMax int64 // 0: the default, maxChecks()
		want      int64
	}{
		{"per client", 100, 3 * maxChecksPerClient},
		{"server-wide", 0, min(maxChecks(), 3*maxChecksPerClient)},
	}
	const attempts = 3 * 8
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := costSettings(t, realisticCost())
			st.HandshakeTimeout = time.Minute // the checks queue, on a busy machine
			env := startServer(t, st)
			if tt.serverMax > 0 {
				env.srv.lim.checks = semaphore.NewWeighted(tt.serverMax)
			}
			var perClient [3]func() int64
			for i := range perClient {
				ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)})
				perClient[i] = samplePeak(t, func() int64 {
					g := &env.srv.lim.guard
					g.mu.Lock()
					defer g.mu.Unlock()
					if el := g.byKey[authKey{client: ip}]; el != nil {
						return int64(el.Value.(*authEntry).inflight)
					}
					return 0
				})
			}
			total := samplePeak(t, func() int64 { return env.srv.lim.checksRunning.Load() })
			var wg sync.WaitGroup
			var answered atomic.Int32
			for i := range attempts {
				wg.Go(func() {
					r := dialFrom(t, fmt.Sprintf("127.0.0.%d", 2+i%3), env.addr)
					if status, _ := r.tryLogin("alice", fmt.Sprintf("guess-%d", i)); status != 0 {
						answered.Add(1)
					}
				})
			}
			wg.Wait()
			t.Logf("peak checks at once: per client %d %d %d, in all %d (server-wide bound %d)",
				perClient[0](), perClient[1](), perClient[2](), total(), tt.serverMax)
			for i, p := range perClient {
				if p() > maxChecksPerClient {
					t.Errorf("client %d: %d checks at once, want at most %d", i, p(), maxChecksPerClient)
				}
			}
			if total() > tt.want {
				t.Errorf("%d checks at once in all, want at most %d", total(), tt.want)
			}
			if answered.Load() != attempts {
				t.Errorf("%d of %d attempts refused, want all", answered.Load(), attempts)
			}
		})
	}
}

// TestAuthBlockScopes: one user's failures block that user from that
// address, not the others behind it; failures across many names from one
// address block the address (auth_fail_limit_ip); another address is
// served throughout; ClearAuthBlocks (a reload) lifts both.
func TestAuthBlockScopes(t *testing.T) {
	const limit, limitIP = 3, 6
	st := costSettingsUsers(t, map[string]int{"alice": realisticCost(), "carol": realisticCost()})
	st.Limits.AuthFail = AuthFailLimit{Max: limit, MaxClient: limitIP, Window: time.Minute, Cooldown: time.Minute}
	env := startServer(t, st)
	login := func(src, user, pass string) byte {
		t.Helper()
		r := dialFrom(t, src, env.addr)
		status, _ := r.tryLogin(user, pass)
		return status
	}

	// alice mistypes her password: she is blocked at 127.0.0.2, carol
	// is not.
	for range limit {
		if login("127.0.0.2", "alice", "typo") == 0 {
			t.Fatal("wrong password accepted")
		}
	}
	if login("127.0.0.2", "alice", alicePass) == 0 {
		t.Error("alice accepted at 127.0.0.2 after auth_fail_limit failures")
	}
	if login("127.0.0.2", "carol", alicePass) != 0 {
		t.Error("carol refused at 127.0.0.2 because alice was blocked there")
	}
	if login("127.0.0.3", "alice", alicePass) != 0 {
		t.Error("alice refused at 127.0.0.3")
	}

	// Someone at 127.0.0.4 tries a name per attempt: under
	// auth_fail_limit for each, the address reaches auth_fail_limit_ip.
	for i := range limitIP {
		if login("127.0.0.4", fmt.Sprintf("user%d", i), "guess") == 0 {
			t.Fatal("unknown user accepted")
		}
	}
	if login("127.0.0.4", "carol", alicePass) == 0 {
		t.Error("carol accepted at 127.0.0.4 after auth_fail_limit_ip failures from it")
	}
	if login("127.0.0.3", "carol", alicePass) != 0 {
		t.Error("carol refused at 127.0.0.3")
	}

	var scopes []string
	for _, l := range env.logs.FilterMessage("client blocked after failed authentications").All() {
		f := l.ContextMap()
		scopes = append(scopes, fmt.Sprintf("%s %s %v", f["scope"], f["client"], f["user"]))
	}
	want := []string{"user 127.0.0.2 alice", "client 127.0.0.4 <nil>"}
	if fmt.Sprint(scopes) != fmt.Sprint(want) {
		t.Errorf("block lines %q, want %q", scopes, want)
	}
	if got := metricValue(t, st.Metrics, "ifsocks_auth_blocked_clients", ""); got != 2 {
		t.Errorf("ifsocks_auth_blocked_clients = %v, want 2", got)
	}

	if n := env.srv.ClearAuthBlocks(); n != 2 {
		t.Errorf("ClearAuthBlocks lifted %d blocks, want 2", n)
	}
	if login("127.0.0.2", "alice", alicePass) != 0 || login("127.0.0.4", "carol", alicePass) != 0 {
		t.Error("refused after the blocks were lifted")
	}
	lifted := env.logs.FilterMessage("authentication blocks lifted by reload").All()
	if len(lifted) != 1 || lifted[0].Level != zapcore.WarnLevel || lifted[0].ContextMap()["refused"] != int64(2) {
		t.Errorf("lifted lines %v, want one warning with refused 2", lifted)
	}
	if got := metricValue(t, st.Metrics, "ifsocks_auth_blocked_clients", ""); got != 0 {
		t.Errorf("ifsocks_auth_blocked_clients = %v after the blocks were lifted, want 0", got)
	}
}

// samplePeak polls f every 200µs until the test ends and returns a
// function giving the highest value seen so far.
func samplePeak(tb testing.TB, f func() int64) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			if v := f(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	tb.Cleanup(func() { close(stop); wg.Wait() })
	return peak.Load
}
