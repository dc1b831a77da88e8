package socks

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap/zapcore"
)

// TestSlowloris holds 1,000 connections that never finish their handshake
// — half silent, half sending one byte a second — from ten client IPs,
// and meanwhile times 200 complete requests of a normal client (connect,
// authenticate, CONNECT, echo, close): p99 must stay under 100 ms. Then
// every slow connection must be closed at handshake_timeout, counted from
// its connect, trickle or not.
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections for several seconds")
	}
	const (
		slow      = 1000
		ips       = 10
		requests  = 200
		handshake = 5 * time.Second
	)
	raiseNoFile(t, 4*slow+1024)
	st := testSettings(t)
	st.HandshakeTimeout = handshake
	st.Limits.MaxHandshakesPerIP = slow/ips + 10
	env := startServer(t, st)
	echo := echoServer(t)

	type slowConn struct {
		c      net.Conn
		opened time.Time
		closed chan time.Duration // after opened
	}
	conns := make([]*slowConn, 0, slow)
	var readers sync.WaitGroup
	t.Cleanup(readers.Wait) // runs after the connections' own cleanups close them
	for i := range slow {
		r := dialFrom(t, fmt.Sprintf("127.0.0.%d", 10+i%ips), env.addr)
		sc := &slowConn{c: r.c, opened: time.Now(), closed: make(chan time.Duration, 1)}
		conns = append(conns, sc)
		readers.Go(func() {
			io.Copy(io.Discard, sc.c)
			sc.closed <- time.Since(sc.opened)
		})
	}
	// The odd ones send a greeting announcing 255 methods, a byte a
	// second: it would take over four minutes to complete.
	stopTrickle := make(chan struct{})
	var trickler sync.WaitGroup
	trickler.Go(func() {
		greeting := []byte{5, 255}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			b := byte(i)
			if i < len(greeting) {
				b = greeting[i]
			}
			for j := 1; j < len(conns); j += 2 {
				conns[j].c.Write([]byte{b})
			}
			select {
			case <-stopTrickle:
				return
			case <-tick.C:
			}
		}
	})
	defer func() { close(stopTrickle); trickler.Wait() }()
	waitFor(t, 10*time.Second, "all slow connections accepted", func() bool { return env.srv.ActiveConns() >= slow })

	lat := make([]time.Duration, 0, requests)
	begin := time.Now()
	for range requests {
		start := time.Now()
		c, err := net.DialTimeout("tcp", env.addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r := &rawClient{tb: t, c: c}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r.login("alice", alicePass)
		if rep, _ := r.connect(echo); rep != RepSucceeded {
			t.Fatalf("CONNECT reply %#x under slowloris", rep)
		}
		r.send('p', 'i', 'n', 'g')
		r.expect('p', 'i', 'n', 'g')
		c.Close()
		lat = append(lat, time.Since(start))
	}
	measured := time.Since(begin)
	held := 0
	for _, sc := range conns {
		if len(sc.closed) == 0 {
			held++
		}
	}
	t.Logf("%d requests in %v with %d slow connections held: p50 %v, p99 %v, max %v",
		requests, measured, held, percentile(lat, 50), percentile(lat, 99), percentile(lat, 100))
	if held != slow {
		t.Errorf("only %d of %d slow connections were held during the measurement", held, slow)
	}
	if p99 := percentile(lat, 99); p99 > 100*time.Millisecond {
		t.Errorf("p99 latency %v under slowloris, want < 100ms", p99)
	}

	// Each slow connection is closed at handshake_timeout. The server's
	// clock starts at accept, a little after the client's connect
	// returned, and 1,000 closes at once queue up: allow for both.
	// The client's clock starts when its connect returns, which on a
	// busy machine can be after the server accepted: allow some of that.
	var first, last [2]time.Duration // silent, trickling
	for i, sc := range conns {
		select {
		case d := <-sc.closed:
			k := i % 2
			if i < 2 || d < first[k] {
				first[k] = d
			}
			last[k] = max(last[k], d)
		case <-time.After(handshake + 5*time.Second):
			t.Fatalf("slow connection %d still open %v after it connected", i, time.Since(sc.opened))
		}
	}
	for k, kind := range []string{"silent", "trickling"} {
		t.Logf("%s connections closed %v to %v after connecting (handshake_timeout %v)", kind, first[k], last[k], handshake)
		if first[k] < handshake-250*time.Millisecond || last[k] > handshake+1500*time.Millisecond {
			t.Errorf("%s connections closed %v to %v after connecting, want about %v", kind, first[k], last[k], handshake)
		}
	}
	waitFor(t, 5*time.Second, "connections gone", func() bool { return env.srv.ActiveConns() == 0 })
}

// TestHandshakesPerIP: a client IP with max_handshakes_per_ip connections
// in their handshake has its next connection closed at once; other IPs
// are not affected; a connection gives its slot back when its request has
// been read (a running flow holds none) and when it closes.
func TestHandshakesPerIP(t *testing.T) {
	const limit = 3
	st := testSettings(t)
	st.HandshakeTimeout = 5 * time.Second
	st.Limits.MaxHandshakesPerIP = limit
	st.Metrics = metrics.New()
	env := startServer(t, st)
	echo := echoServer(t)
	const refusedMetric = "ifsocks_connections_refused_total"

	silent := make([]*rawClient, 0, limit)
	for range limit {
		silent = append(silent, dialFrom(t, "127.0.0.2", env.addr))
	}
	waitFor(t, 2*time.Second, "silent connections accepted", func() bool { return env.srv.ActiveConns() == limit })
	over := dialFrom(t, "127.0.0.2", env.addr)
	start := time.Now()
	over.expectClosed()
	if el := time.Since(start); el > time.Second {
		t.Errorf("connection over the limit closed after %v, want at once", el)
	}
	if n := metricValue(t, st.Metrics, refusedMetric, `reason="handshakes_per_ip"`); n != 1 {
		t.Errorf("%s = %v, want 1", refusedMetric, n)
	}

	// 127.0.0.3 has two flows running and fills its slots too: the
	// flows hold none.
	for range 2 {
		r := dialFrom(t, "127.0.0.3", env.addr)
		r.login("alice", alicePass)
		if rep, _ := r.connect(echo); rep != RepSucceeded {
			t.Fatalf("127.0.0.3: CONNECT reply %#x while 127.0.0.2 is at its limit", rep)
		}
	}
	for range limit {
		dialFrom(t, "127.0.0.3", env.addr)
	}
	waitFor(t, 2*time.Second, "127.0.0.3's connections accepted", func() bool { return env.srv.ActiveConns() == 2*limit+2 })
	dialFrom(t, "127.0.0.3", env.addr).expectClosed()

	// When 127.0.0.2's silent connections end, it is served again.
	for _, r := range silent {
		r.c.Close()
	}
	waitFor(t, 2*time.Second, "silent connections gone", func() bool { return env.srv.ActiveConns() == limit+2 })
	r := dialFrom(t, "127.0.0.2", env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		t.Fatalf("127.0.0.2 after its connections ended: CONNECT reply %#x", rep)
	}

	if n := metricValue(t, st.Metrics, refusedMetric, `reason="handshakes_per_ip"`); n != 2 {
		t.Errorf("%s = %v, want 2", refusedMetric, n)
	}
	lines := env.logs.FilterMessage("connection refused: client has too many connections in handshake").All()
	if len(lines) < 1 || len(lines) > 2 {
		t.Fatalf("%d refusal lines for 2 refusals within a second, want 1 or 2", len(lines))
	}
	if l := lines[0]; l.Level != zapcore.DebugLevel || l.ContextMap()["client"] != "127.0.0.2" {
		t.Errorf("refusal line %v %v, want debug naming 127.0.0.2", l.Level, l.ContextMap())
	}
}

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

// TestMaxConnections: over the server's or a user's max_connections a
// request gets its reply code and a flow line with outcome "limit"; once a
// flow ends a new one is accepted. UDP associations count as flows.
func TestMaxConnections(t *testing.T) {
	tests := []struct {
		name            string
		server, alice   int
		overUDP         bool // the request over the limit is a UDP ASSOCIATE
		wantAlice       byte // reply to alice's request over the limit
		wantBob         byte // reply to bob's request at the same time
		wantLogErrorMsg string
	}{
		{"server", 2, 0, false, RepGeneralFailure, RepGeneralFailure, errServerConns.Error()},
		{"user", 0, 2, false, RepNotAllowed, RepSucceeded, errUserConns.Error()},
		{"user, UDP over the limit", 0, 2, true, RepNotAllowed, RepSucceeded, errUserConns.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := udpSettings(t)
			st.Limits.MaxConnections = tt.server
			st.Users["alice"] = User{Interface: "lo", MaxConnections: tt.alice}
			env := startServer(t, st)
			echo := echoServer(t)

			// alice holds a CONNECT and a UDP association.
			held := dialRaw(t, env.addr)
			held.login("alice", alicePass)
			if rep, _ := held.connect(echo); rep != RepSucceeded {
				t.Fatalf("first CONNECT: %#x", rep)
			}
			associate(t, env, "alice", alicePass)

			r := dialRaw(t, env.addr)
			r.login("alice", alicePass)
			var rep byte
			if tt.overUDP {
				rep, _ = r.associate(netip.MustParseAddrPort("0.0.0.0:0"))
			} else {
				rep, _ = r.connect(echo)
			}
			if rep != tt.wantAlice {
				t.Fatalf("alice over the limit: reply %#x, want %#x", rep, tt.wantAlice)
			}
			r.expectClosed()
			b := dialRaw(t, env.addr)
			b.login("bob", bobPass)
			if rep, _ := b.connect(echo); rep != tt.wantBob {
				t.Fatalf("bob: reply %#x, want %#x", rep, tt.wantBob)
			}
			if tt.wantBob == RepSucceeded {
				b.c.Close()
			}

			var limited []map[string]any
			for _, l := range env.flowLines() {
				if f := l.ContextMap(); f["outcome"] == outcomeLimit {
					limited = append(limited, f)
				}
			}
			if len(limited) < 1 || limited[0]["user"] != "alice" || limited[0]["reply"] != uint8(tt.wantAlice) {
				t.Fatalf("limit flow lines %v, want alice's first with reply %d", limited, tt.wantAlice)
			}
			if msg, _ := limited[0]["error"].(string); msg == "" || !strings.Contains(msg, tt.wantLogErrorMsg) {
				t.Errorf("limit line error %q, want it to say %q", msg, tt.wantLogErrorMsg)
			}

			// When the held CONNECT ends, alice gets a new one.
			held.c.Close()
			waitFor(t, 2*time.Second, "held flow released", func() bool {
				env.srv.lim.flowMu.Lock()
				defer env.srv.lim.flowMu.Unlock()
				return env.srv.lim.users["alice"] != nil && env.srv.lim.users["alice"].n == 1
			})
			n := dialRaw(t, env.addr)
			n.login("alice", alicePass)
			if rep, _ := n.connect(echo); rep != RepSucceeded {
				t.Fatalf("CONNECT after a flow ended: reply %#x", rep)
			}
		})
	}
}
