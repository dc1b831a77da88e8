package socks

import (
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/metrics"
)

const mib = 1 << 20

// rateSettings limits alice to bps each way with the default burst rule
// (100 ms of the rate, at least 64 KiB); bob is unlimited.
func rateSettings(tb testing.TB, bps int64) *Settings {
	st := udpSettings(tb)
	st.Users["alice"] = User{Egress: Egress{Interfaces: []string{"lo"}}, Rate: Rate{BytesPerSec: bps, Burst: int(max(bps/10, 64<<10))}}
	return st
}

// TestRateLimit: alice, limited to 1 MiB/s, moves 3 MiB each way at once
// in about 3 s per direction (less the burst), while bob, unlimited and
// running at the same time, is not slowed. Two flows of alice share her
// rate.
func TestRateLimit(t *testing.T) {
	const size = 3 * mib
	env := startServer(t, rateSettings(t, mib))
	ba, bb := startBlaster(t, size), startBlaster(t, size)

	var wg sync.WaitGroup
	var ra, rb transferResult
	wg.Go(func() { ra = ba.transfer(t, env, "alice", alicePass, size) })
	wg.Go(func() { rb = bb.transfer(t, env, "bob", bobPass, size) })
	wg.Wait()
	t.Logf("alice (1 MiB/s): up %v, down %v; bob (unlimited): up %v, down %v", ra.up, ra.down, rb.up, rb.down)
	for _, r := range []transferResult{ra, rb} {
		if r.upErr != nil || r.downErr != nil || r.upN != size || r.downN != size {
			t.Fatalf("transfer: up %d bytes (%v), down %d bytes (%v); want %d each way", r.upN, r.upErr, r.downN, r.downErr, size)
		}
	}
	// No load makes a token bucket faster: 3 MiB at 1 MiB/s less the
	// burst take at least paced. Load only makes things slower, so the
	// upper bounds are generous, and bob, unlimited, must finish sooner
	// than any paced flow could.
	paced := pacedAtLeast(size, mib)
	for dir, d := range map[string]time.Duration{"up": ra.up, "down": ra.down} {
		if d < paced || d > 4*paced {
			t.Errorf("alice %s took %v, want at least %v (and not 4 times that)", dir, d, paced)
		}
	}
	for dir, d := range map[string]time.Duration{"up": rb.up, "down": rb.down} {
		if d >= paced {
			t.Errorf("bob (unlimited) %s took %v, as long as alice's rate must take (%v)", dir, d, paced)
		}
	}

	// Two flows of alice at once share 1 MiB/s: 1.5 MiB each way each
	// take about 3 s as well. The flows start one handshake apart, so the
	// time is counted from before both began to when the last ended: a
	// flow's own duration leaves out what the other used before it began.
	const half = size / 2
	b1, b2 := startBlaster(t, half), startBlaster(t, half)
	var r1, r2 transferResult
	begun := time.Now()
	wg.Go(func() { r1 = b1.transfer(t, env, "alice", alicePass, half) })
	wg.Go(func() { r2 = b2.transfer(t, env, "alice", alicePass, half) })
	wg.Wait()
	t.Logf("two flows of alice: up %v and %v, down %v and %v, started %v apart", r1.up, r2.up, r1.down, r2.down, r2.start.Sub(r1.start).Abs())
	for _, r := range []transferResult{r1, r2} {
		if r.upN != half || r.downN != half {
			t.Fatalf("shared transfer: up %d, down %d bytes, want %d", r.upN, r.downN, half)
		}
	}
	last := r1.end()
	if e := r2.end(); e.After(last) {
		last = e
	}
	if d := last.Sub(begun); d < paced || d > 4*paced {
		t.Errorf("two flows sharing 1 MiB/s finished after %v, want at least %v (and not 4 times that)", d, paced)
	}
}

// pacedAtLeast is the least time n bytes can take through a limiter of
// rate bps with the default burst, whatever the machine's load: the
// bucket holds at most one burst, and refills at bps. A 2% margin covers
// the clock's granularity.
func pacedAtLeast(n, bps int64) time.Duration {
	burst := max(bps/10, 64<<10)
	return time.Duration(float64(n-burst) / float64(bps) * 0.98 * float64(time.Second))
}

// TestRateLimitReload: a reload that lifts alice's rate speeds up her
// running flow at once.
func TestRateLimitReload(t *testing.T) {
	const size = 2 * mib
	st := rateSettings(t, 128<<10) // 16 s for 2 MiB
	env := startServer(t, st)
	b := startBlaster(t, size)
	lifted := udpSettings(t)
	lifted.Users["alice"] = User{Egress: Egress{Interfaces: []string{"lo"}}}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		time.Sleep(500 * time.Millisecond)
		env.srv.Update(lifted)
	})
	r := b.transfer(t, env, "alice", alicePass, size)
	t.Logf("2 MiB with the rate lifted after 0.5 s: up %v, down %v", r.up, r.down)
	if r.upN != size || r.downN != size {
		t.Fatalf("up %d, down %d bytes, want %d", r.upN, r.downN, size)
	}
	// At the old rate no load could make it faster than old; lifting the
	// rate must bring it well under.
	if old := pacedAtLeast(size, 128<<10); r.up > old*6/10 || r.down > old*6/10 {
		t.Errorf("transfer took up %v, down %v after the rate was lifted, want well under the %v of the old rate", r.up, r.down, old)
	}
}

// TestRateLimitCut: a flow parked in its limiter is cut at once when the
// server closes its user's flows.
func TestRateLimitCut(t *testing.T) {
	env := startServer(t, rateSettings(t, 64<<10))
	b := startBlaster(t, 4*mib)
	r := dialRaw(t, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(b.addr); rep != RepSucceeded {
		t.Fatalf("CONNECT reply %#x", rep)
	}
	done := make(chan transferResult, 1)
	go func() { done <- b.run(r.c, 4*mib) }()
	time.Sleep(500 * time.Millisecond) // the burst is spent; both directions wait
	cut := time.Now()
	if n := env.srv.CloseUsers(map[string]bool{"alice": true}); n != 1 {
		t.Fatalf("CloseUsers closed %d flows, want 1", n)
	}
	select {
	case res := <-done:
		t.Logf("cut after %v: %d bytes down", time.Since(cut), res.downN)
		if res.downN >= 4*mib {
			t.Error("the whole transfer passed: it was not paced")
		}
	case <-time.After(15 * time.Second):
		// The 4 MiB need a minute at 64 KiB/s: ending well before
		// proves the cut, on any load.
		t.Fatal("paced flow still running 15 s after it was cut")
	}
	waitFor(t, 10*time.Second, "flow logged", func() bool {
		for _, l := range env.flowLines() {
			if l.ContextMap()["outcome"] == outcomeRemoved {
				return true
			}
		}
		return false
	})
}

// TestRateLimitUDP: datagrams over a user's rate are dropped and counted;
// those within it pass.
func TestRateLimitUDP(t *testing.T) {
	const (
		bps   = 64 << 10 // burst 64 KiB too
		dgram = 1000
		sent  = 200
	)
	st := rateSettings(t, bps)
	st.Metrics = metrics.New()
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "alice", alicePass)
	payload := make([]byte, dgram)
	start := time.Now()
	// One every millisecond: slow enough for the relay to read them all,
	// about fifteen times the rate.
	for range sent {
		u.send(echo.addr(), payload)
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	got := 0
	for {
		if _, _, err := u.recv(500 * time.Millisecond); err != nil {
			break
		}
		got++
	}
	total := time.Since(start)
	// Bounds from the token bucket, which no load can loosen: the burst
	// lets 65 datagrams through, the rate 65.5 more a second of the whole
	// run (the relay may still read queued datagrams after the last
	// send); the echoes pass the down limiter, which has the same room.
	most := int((bps + float64(bps)*total.Seconds()) / dgram)
	dropped := metricValue(t, st.Metrics, "ifsocks_udp_dropped_total", `reason="rate_limit"`)
	t.Logf("%d datagrams of %d bytes sent in %v: %d echoed, %v dropped for the rate (at most %d allowed)", sent, dgram, elapsed, got, dropped, most)
	if got > most {
		t.Errorf("%d datagrams came back, more than the %d the rate allows in %v", got, most, total)
	}
	if got < bps/dgram/2 {
		t.Errorf("%d datagrams came back, want at least half of the %d the burst alone lets through", got, bps/dgram)
	}
	// Sent faster than the bucket could pass them: some must be dropped.
	if passable := int((bps + float64(bps)*elapsed.Seconds()) / dgram); sent > passable+10 && dropped < 1 {
		t.Errorf("no datagram dropped for the rate, though %d were sent in %v, when at most %d could pass", sent, elapsed, passable)
	}
	if int(dropped)+got > sent {
		t.Errorf("%v dropped and %d echoed of %d sent", dropped, got, sent)
	}
}
