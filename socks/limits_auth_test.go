package socks

import (
	"io"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

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
}

// TestAuthUnknownUserSameAsWrongPassword: an unknown user and a wrong
// password get the same bytes back and cost the same at a realistic bcrypt
// cost: the medians of 9 tries of each, interleaved in alternating order,
// within 10 %. What is compared is the CPU time the process
// spent on each try (the client here only waits): on a shared, busy
// machine wall-clock times swing by more than that margin, because of
// waiting for a CPU, not because of the work done. Wall-clock figures are
// logged too.
func TestAuthUnknownUserSameAsWrongPassword(t *testing.T) {
	const tries = 9
	st := costSettings(t, realisticCost())
	env := startServer(t, st)
	creds := []struct{ user, pass string }{{"mallory", "guess"}, {"alice", "guess"}}
	var wall, cpu [2][]time.Duration
	var replies [2][]byte
	for i := range tries {
		for k := range creds {
			j := (i + k) % len(creds) // alternate which goes first
			c := creds[j]
			r := dialRaw(t, env.addr)
			r.send(5, 1, methodUserPass)
			r.expect(5, methodUserPass)
			msg := append([]byte{1, byte(len(c.user))}, c.user...)
			msg = append(append(msg, byte(len(c.pass))), c.pass...)
			start, cpuStart := time.Now(), cpuTime(t)
			r.send(msg...)
			got, err := io.ReadAll(r.c) // the reply, then the close
			wall[j] = append(wall[j], time.Since(start))
			cpu[j] = append(cpu[j], cpuTime(t)-cpuStart)
			if err != nil && !isReset(err) {
				t.Fatalf("%s: %v", c.user, err)
			}
			if i == 0 {
				replies[j] = got
			} else if string(got) != string(replies[j]) {
				t.Fatalf("%s: reply % x, earlier % x", c.user, got, replies[j])
			}
		}
	}
	if string(replies[0]) != string(replies[1]) || string(replies[0]) != "\x01\x01" {
		t.Errorf("unknown user got % x, wrong password % x; want both 01 01", replies[0], replies[1])
	}
	ratio := float64(median(cpu[0])) / float64(median(cpu[1]))
	t.Logf("bcrypt cost %d: unknown user: CPU median %v, wall median %v (fastest %v); wrong password: CPU median %v, wall median %v (fastest %v); CPU ratio %.2f",
		realisticCost(), median(cpu[0]), median(wall[0]), slices.Min(wall[0]),
		median(cpu[1]), median(wall[1]), slices.Min(wall[1]), ratio)
	if ratio < 0.9 || ratio > 1.1 {
		t.Errorf("an unknown user costs %.2f times a wrong password, want 0.9-1.1", ratio)
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestAuthGuardBounded: the table of remembered clients never exceeds
// authTableSize, whatever the number of addresses; IPv6 clients are
// counted by /64.
func TestAuthGuardBounded(t *testing.T) {
	var g authGuard
	lim := AuthFailLimit{Max: 3, Window: time.Minute, Cooldown: time.Minute}
	now := time.Now()
	for i := range authTableSize + 1000 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.failed(ip, lim, now)
	}
	if n := g.tracked(); n != authTableSize {
		t.Errorf("tracking %d clients, want the cap %d", n, authTableSize)
	}
	// Stale entries make room before live ones are evicted.
	later := now.Add(2 * time.Minute)
	g.failed(netip.MustParseAddr("192.0.2.1"), lim, later)
	if n := g.tracked(); n != 1 {
		t.Errorf("tracking %d clients after all others went stale, want 1", n)
	}

	tests := []struct {
		name    string
		ips     []string
		blocked string
		want    bool
	}{
		{"IPv6 /64 counts as one client", []string{"2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"}, "2001:db8:1:2::99", true},
		{"other /64 not blocked", []string{"2001:db8:1:3::1", "2001:db8:1:3::2", "2001:db8:1:3::3"}, "2001:db8:1:4::1", false},
		{"IPv4 addresses are separate", []string{"192.0.2.10", "192.0.2.11", "192.0.2.12"}, "192.0.2.10", false},
		{"IPv4-mapped is IPv4", []string{"::ffff:192.0.2.20", "192.0.2.20", "::ffff:192.0.2.20"}, "192.0.2.20", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g authGuard
			for _, ip := range tt.ips {
				g.failed(netip.MustParseAddr(ip), lim, now)
			}
			if got := g.blocked(netip.MustParseAddr(tt.blocked), lim, now); got != tt.want {
				t.Errorf("blocked(%s) = %v, want %v", tt.blocked, got, tt.want)
			}
		})
	}
}
