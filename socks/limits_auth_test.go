package socks

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestAuthBlock: after auth_fail_limit failures from one IP its next
// attempts are refused without bcrypt, even with the right password, with
// one warning for the block and metrics; another IP authenticates
// meanwhile at bcrypt's usual speed; after the cool-down the IP is served
// again.
func TestAuthBlock(t *testing.T) {
	const (
		limit    = 4
		cooldown = 2 * time.Second
	)
	st := costSettings(t, realisticCost())
	st.Limits.AuthFail = AuthFailLimit{Max: limit, Window: time.Minute, Cooldown: cooldown}
	env := startServer(t, st)
	const attacker, other = "127.0.0.2", "127.0.0.3"

	var paid []time.Duration
	for range limit {
		r := dialFrom(t, attacker, env.addr)
		status, took := r.tryLogin("alice", "guess")
		if status == 0 {
			t.Fatal("a wrong password was accepted")
		}
		r.expectClosed()
		paid = append(paid, took)
	}
	blockedAt := time.Now()
	bcryptTime := median(paid)

	var refused []time.Duration
	for _, pass := range []string{"guess2", alicePass, "guess3"} {
		r := dialFrom(t, attacker, env.addr)
		status, took := r.tryLogin("alice", pass)
		if status == 0 {
			t.Fatalf("blocked client authenticated with %q", pass)
		}
		r.expectClosed()
		refused = append(refused, took)
	}
	r := dialFrom(t, other, env.addr)
	status, otherTook := r.tryLogin("alice", alicePass)
	if status != 0 {
		t.Fatalf("%s refused while %s is blocked", other, attacker)
	}
	t.Logf("bcrypt cost %d: failures took %v (median %v); refused while blocked: %v; %s meanwhile: %v",
		realisticCost(), paid, bcryptTime, refused, other, otherTook)
	for _, d := range refused {
		if d > bcryptTime/4 {
			t.Errorf("refusal took %v, want far below bcrypt's %v", d, bcryptTime)
		}
	}
	if otherTook > 3*bcryptTime {
		t.Errorf("%s took %v to authenticate, want about bcrypt's %v", other, otherTook, bcryptTime)
	}
	if time.Since(blockedAt) >= cooldown {
		t.Fatalf("test too slow: the cool-down ended before its checks")
	}

	for _, m := range []struct {
		name, labels string
		want         float64
	}{
		{"ifsocks_auth_blocks_total", "", 1},
		{"ifsocks_auth_blocked_clients", "", 1},
		{"ifsocks_auth_failures_total", `reason="blocked"`, 3},
		{"ifsocks_auth_failures_total", `reason="bad_credentials"`, limit},
	} {
		if got := metricValue(t, st.Metrics, m.name, m.labels); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	blocks := env.logs.FilterMessage("client blocked after failed authentications").All()
	if len(blocks) != 1 {
		t.Fatalf("%d block lines, want exactly 1: %v", len(blocks), blocks)
	}
	if f := blocks[0].ContextMap(); blocks[0].Level != zapcore.WarnLevel || f["client"] != attacker || f["failures"] != int64(limit) {
		t.Errorf("block line %v %v, want warn with client %s, failures %d", blocks[0].Level, f, attacker, limit)
	}
	if n := env.logs.FilterMessage("authentication failed").Len(); n != limit {
		t.Errorf("%d \"authentication failed\" lines, want %d (refusals are debug)", n, limit)
	}

	time.Sleep(time.Until(blockedAt.Add(cooldown + 50*time.Millisecond)))
	r = dialFrom(t, attacker, env.addr)
	if status, _ := r.tryLogin("alice", alicePass); status != 0 {
		t.Fatalf("%s still refused after the cool-down", attacker)
	}
	if got := metricValue(t, st.Metrics, "ifsocks_auth_blocked_clients", ""); got != 0 {
		t.Errorf("ifsocks_auth_blocked_clients = %v after the cool-down, want 0", got)
	}
	// Each refused attempt has its debug line; the end of the block a
	// warning that says how many were refused.
	refusals := env.logs.FilterMessage("authentication refused").All()
	if len(refusals) != 3 || refusals[0].Level != zapcore.DebugLevel {
		t.Errorf("%d \"authentication refused\" lines (first %v), want 3 at debug", len(refusals), refusals)
	}
	ended := env.logs.FilterMessage("authentication block ended").All()
	if len(ended) != 1 {
		t.Fatalf("%d block-ended lines, want 1: %v", len(ended), ended)
	}
	if f := ended[0].ContextMap(); ended[0].Level != zapcore.WarnLevel || f["client"] != attacker || f["user"] != "alice" || f["refused"] != int64(3) {
		t.Errorf("block-ended line %v %v, want warn naming %s and alice with refused 3", ended[0].Level, f, attacker)
	}
}

// TestAuthFailuresCostTheSame: every failed login gets the same bytes
// back and costs the same at realistic bcrypt costs — an unknown user, a
// wrong password of a user with the cheapest hash and of one with the
// dearest (users' hashes of costs 2 apart differ 4-fold in work). For each
// case, the least CPU time of several tries of each credential,
// interleaved in rotating order, are within 10 % of each other. CPU time
// the process spent on each try is compared (the client here only waits):
// on a shared, busy machine wall-clock times swing by more than that
// margin, because of waiting for a CPU, not because of the work done; and
// the least of several tries, since anything else the process does (the
// garbage collector, the race detector) only adds to a try. Medians and
// wall-clock figures are logged too.
func TestAuthFailuresCostTheSame(t *testing.T) {
	c := realisticCost()
	tests := []struct {
		name  string
		costs map[string]int
		tries int
	}{
		{"one cost", map[string]int{"alice": c}, 9},
		{"mixed costs", map[string]int{"alice": c, "carol": c + 2}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := costSettingsUsers(t, tt.costs)
			env := startServer(t, st)
			creds := append([]string{"mallory"}, slices.Sorted(maps.Keys(tt.costs))...)
			cpu, wall, replies := failedLoginCosts(t, env, creds, tt.tries)
			for j, u := range creds {
				t.Logf("%s (cost %d), wrong password: reply % x, CPU least %v, median %v; wall median %v (fastest %v)",
					u, tt.costs[u], replies[j], slices.Min(cpu[j]), median(cpu[j]), median(wall[j]), slices.Min(wall[j]))
				if replies[j] != "\x01\x01" {
					t.Errorf("%s: reply % x, want 01 01", u, replies[j])
				}
			}
			for j := 1; j < len(creds); j++ {
				ratio := float64(slices.Min(cpu[0])) / float64(slices.Min(cpu[j]))
				t.Logf("unknown user / %s: least CPU ratio %.2f (medians %.2f)", creds[j], ratio, float64(median(cpu[0]))/float64(median(cpu[j])))
				// One bcrypt cost step is a factor of 2: a window of
				// 0.7-1.4 catches it and leaves room for a loaded machine.
				if ratio < 0.7 || ratio > 1.4 {
					t.Errorf("an unknown user costs %.2f times a wrong password of %s (cost %d), want 0.7-1.4",
						ratio, creds[j], tt.costs[creds[j]])
				}
			}
		})
	}
}

// failedLoginCosts logs in tries times as each of users with a wrong
// password, in rotating order, and returns the CPU and wall-clock time
// each attempt cost and each user's reply (always the same, or it fails).
func failedLoginCosts(t *testing.T, env *testEnv, users []string, tries int) (cpu, wall [][]time.Duration, replies []string) {
	t.Helper()
	cpu, wall = make([][]time.Duration, len(users)), make([][]time.Duration, len(users))
	replies = make([]string, len(users))
	for i := range tries {
		for k := range users {
			j := (i + k) % len(users) // rotate which goes first
			user, pass := users[j], "guess"
			r := dialRaw(t, env.addr)
			r.send(5, 1, methodUserPass)
			r.expect(5, methodUserPass)
			msg := append([]byte{1, byte(len(user))}, user...)
			msg = append(append(msg, byte(len(pass))), pass...)
			start, cpuStart := time.Now(), cpuTime(t)
			r.send(msg...)
			got, err := io.ReadAll(r.c) // the reply, then the close
			wall[j] = append(wall[j], time.Since(start))
			cpu[j] = append(cpu[j], cpuTime(t)-cpuStart)
			if err != nil && !isReset(err) {
				t.Fatalf("%s: %v", user, err)
			}
			if i == 0 {
				replies[j] = string(got)
			} else if string(got) != replies[j] {
				t.Fatalf("%s: reply % x, earlier % x", user, got, replies[j])
			}
		}
	}
	return cpu, wall, replies
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestAuthGuardBounded: the table of remembered entries never exceeds
// authTableSize, whatever the number of addresses; IPv6 clients are
// counted by /64; (client, user) pairs and clients are blocked apart.
func TestAuthGuardBounded(t *testing.T) {
	g := authGuard{log: zap.NewNop()}
	lim := AuthFailLimit{Max: 3, MaxClient: 5, Window: time.Minute, Cooldown: time.Minute}
	for i := range authTableSize/2 + 1000 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		guardFail(t, &g, ip.String(), "alice", lim)
	}
	if n := g.tracked(); n != authTableSize {
		t.Errorf("tracking %d entries, want the cap %d", n, authTableSize)
	}

	tests := []struct {
		name    string
		fails   [][2]string // client, user
		client  string
		user    string
		blocked bool
	}{
		{"IPv6 /64 counts as one client", [][2]string{{"2001:db8:1:2::1", "a"}, {"2001:db8:1:2::2", "a"}, {"2001:db8:1:2:ffff::3", "a"}}, "2001:db8:1:2::99", "a", true},
		{"other /64 not blocked", [][2]string{{"2001:db8:1:3::1", "a"}, {"2001:db8:1:3::2", "a"}, {"2001:db8:1:3::3", "a"}}, "2001:db8:1:4::1", "a", false},
		{"IPv4 addresses are separate", [][2]string{{"192.0.2.10", "a"}, {"192.0.2.11", "a"}, {"192.0.2.12", "a"}}, "192.0.2.10", "a", false},
		{"IPv4-mapped is IPv4", [][2]string{{"::ffff:192.0.2.20", "a"}, {"192.0.2.20", "a"}, {"::ffff:192.0.2.20", "a"}}, "192.0.2.20", "a", true},
		{"one user's failures leave the others", [][2]string{{"192.0.2.30", "a"}, {"192.0.2.30", "a"}, {"192.0.2.30", "a"}}, "192.0.2.30", "b", false},
		{"under the client limit", [][2]string{{"192.0.2.40", "a"}, {"192.0.2.40", "b"}, {"192.0.2.40", "c"}, {"192.0.2.40", "d"}}, "192.0.2.40", "e", false},
		{"client limit across names", [][2]string{{"192.0.2.50", "a"}, {"192.0.2.50", "b"}, {"192.0.2.50", "c"}, {"192.0.2.50", "d"}, {"192.0.2.50", "e"}}, "192.0.2.50", "f", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := authGuard{log: zap.NewNop()}
			for _, f := range tt.fails {
				guardFail(t, &g, f[0], f[1], lim)
			}
			if got := g.refuse(netip.MustParseAddr(tt.client), tt.user, lim, time.Now()); got != tt.blocked {
				t.Errorf("refuse(%s, %s) = %v, want %v", tt.client, tt.user, got, tt.blocked)
			}
		})
	}
}

// guardFail runs one failed check of user from client through g.
func guardFail(tb testing.TB, g *authGuard, client, user string, lim AuthFailLimit) error {
	tb.Helper()
	tk, err := g.begin(context.Background(), netip.MustParseAddr(client), user, auth.Key{}, lim)
	if err != nil {
		return err
	}
	return g.finish(tk, auth.ErrBadCredentials, lim)
}

// TestAuthGuardLoweredLimit: failures counted under a higher limit than
// the one now in force (a reload lowered auth_fail_limit) refuse the next
// attempt at once, rather than leave it waiting for a check that is not
// running.
func TestAuthGuardLoweredLimit(t *testing.T) {
	g := authGuard{log: zap.NewNop()}
	high := AuthFailLimit{Max: 5, Window: time.Minute, Cooldown: time.Minute}
	for range 3 {
		guardFail(t, &g, "192.0.2.1", "a", high)
	}
	low := high
	low.Max = 2
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := g.begin(ctx, netip.MustParseAddr("192.0.2.1"), "a", auth.Key{}, low)
	if !errors.Is(err, errAuthBlocked) || time.Since(start) > time.Second {
		t.Errorf("begin under a lowered limit: %v after %v, want errAuthBlocked at once", err, time.Since(start))
	}
}
