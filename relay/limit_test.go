package relay_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/relay"
	"golang.org/x/time/rate"
)

// startLimited is startRelay for a paced relay with ctx.
func startLimited(tb testing.TB, ctx context.Context, lim relay.Limits) *flow {
	tb.Helper()
	client, proxyClient := tcpPair(tb)
	proxyUp, upstream := tcpPair(tb)
	f := &flow{client: client, upstream: upstream, done: make(chan relay.Result, 1), start: time.Now()}
	relay.StartLimited(ctx, proxyClient, proxyUp, 0, lim, relay.Counts{}, func(r relay.Result) { f.done <- r })
	tb.Cleanup(func() {
		client.SetLinger(0)
		client.Close()
		upstream.SetLinger(0)
		upstream.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			tb.Error("relay did not return after both ends were closed")
		}
	})
	return f
}

// transfer sends up from the client and down from the upstream at once,
// each followed by a half-close, and checks both arrive intact. It returns
// how long each direction took to arrive in full.
func transfer(tb testing.TB, f *flow, up, down []byte) (tUp, tDown time.Duration) {
	tb.Helper()
	for _, c := range []*net.TCPConn{f.client, f.upstream} {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	start := time.Now()
	errc := make(chan error, 2)
	go sendAndClose(f.client, up, errc)
	go sendAndClose(f.upstream, down, errc)
	type got struct {
		b   []byte
		err error
		d   time.Duration
	}
	gotUp := make(chan got, 1)
	go func() {
		b, err := io.ReadAll(f.upstream)
		gotUp <- got{b, err, time.Since(start)}
	}()
	b, err := io.ReadAll(f.client)
	gd := got{b, err, time.Since(start)}
	gu := <-gotUp
	for range 2 {
		if err := <-errc; err != nil {
			tb.Errorf("write: %v", err)
		}
	}
	if gu.err != nil || !bytes.Equal(gu.b, up) {
		tb.Errorf("upstream received %d bytes (err %v), want the %d sent, identical", len(gu.b), gu.err, len(up))
	}
	if gd.err != nil || !bytes.Equal(gd.b, down) {
		tb.Errorf("client received %d bytes (err %v), want the %d sent, identical", len(gd.b), gd.err, len(down))
	}
	return gu.d, gd.d
}

// TestLimitedRate moves 2 MiB each way through relays paced at 1 MiB/s
// with a 64 KiB burst: a paced direction takes about 2 s, an unpaced one
// is not held back. Shared is one limiter for both directions, which then
// take about 4 s together.
func TestLimitedRate(t *testing.T) {
	const (
		size  = 2 << 20
		bps   = 1 << 20
		burst = 64 << 10
	)
	lim := func() *rate.Limiter { return rate.NewLimiter(bps, burst) }
	shared := lim()
	tests := []struct {
		name             string
		lim              relay.Limits
		wantUp, wantDown time.Duration // alone through its limiter; 0: unpaced
		wantBoth         time.Duration // both directions' bytes through a shared limiter
	}{
		{"both directions", relay.Limits{Up: lim(), Down: lim()}, 2 * time.Second, 2 * time.Second, 0},
		{"up only", relay.Limits{Up: lim()}, 2 * time.Second, 0, 0},
		{"down only", relay.Limits{Down: lim()}, 0, 2 * time.Second, 0},
		{"one limiter for both", relay.Limits{Up: shared, Down: shared}, 2 * time.Second, 2 * time.Second, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startLimited(t, context.Background(), tt.lim)
			up, down := randomBytes(t, size), randomBytes(t, size)
			tUp, tDown := transfer(t, f, up, down)
			t.Logf("up %v, down %v", tUp, tDown)
			// A token bucket cannot be made faster by load: a paced
			// direction takes at least want less one burst's worth
			// (2% for the clock). Load only slows things, so the upper
			// bound is generous, and an unpaced direction must finish
			// sooner than any paced one could: a limiter on it would
			// hold it at least that long.
			least := func(want time.Duration) time.Duration {
				return (want - time.Duration(float64(burst)/bps*float64(time.Second))) * 98 / 100
			}
			paced := max(tUp, tDown)
			for _, c := range []struct {
				dir       string
				got, want time.Duration
			}{{"up", tUp, tt.wantUp}, {"down", tDown, tt.wantDown}} {
				switch {
				case c.want == 0 && c.got >= least(2*time.Second):
					t.Errorf("unpaced direction %s took %v, as long as a paced one must (%v)", c.dir, c.got, least(2*time.Second))
				case c.want > 0 && (c.got < least(c.want) || c.got > 4*max(c.want, tt.wantBoth)):
					t.Errorf("paced direction %s took %v, want at least %v (and not 4 times %v)", c.dir, c.got, least(c.want), max(c.want, tt.wantBoth))
				}
			}
			if tt.wantBoth > 0 && paced < least(tt.wantBoth) {
				t.Errorf("both directions through one limiter done after %v, want at least %v", paced, least(tt.wantBoth))
			}
			r := f.wait(t, 5*time.Second)
			if want := (relay.Result{Up: size, Down: size}); r != want {
				t.Errorf("Result = %+v, want %+v", r, want)
			}
		})
	}
}

// TestLimitedCut: a relay whose both directions are parked in their
// limiters (the tokens for the next chunk are many seconds away) ends at
// once when its context is cancelled, closing both connections.
func TestLimitedCut(t *testing.T) {
	const burst = 32 << 10
	// The burst is spent on the first chunks; the next waits up to 32 s.
	lim := relay.Limits{Up: rate.NewLimiter(1<<10, burst), Down: rate.NewLimiter(1<<10, burst)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := startLimited(t, ctx, lim)
	payload := randomBytes(t, 4*burst)
	for _, c := range []*net.TCPConn{f.client, f.upstream} {
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	// Wait, however long the machine takes, until the first bytes have
	// crossed each way: the burst is then being spent, and the rest of
	// the payload waits for tokens that are many seconds away.
	first := make(map[*net.TCPConn][]byte)
	for _, c := range []*net.TCPConn{f.upstream, f.client} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("no byte crossed before the cut: %v", err)
		}
		first[c] = b
	}
	if !f.running() {
		t.Fatal("relay ended before the cut")
	}
	cut := time.Now()
	cancel()
	// The next chunk's tokens are up to 32 s away: ending well before
	// that proves the cut, on any load.
	r := f.wait(t, 15*time.Second)
	t.Logf("relay ended %v after the cut", time.Since(cut))
	if !errors.Is(r.Err, context.Canceled) {
		t.Errorf("Result.Err = %v, want context.Canceled", r.Err)
	}
	// What crossed before the cut is about one burst, not the whole
	// payload. A cut closes with unread data queued, so the kernel resets
	// the connection, and a reset drops what the peer had not yet taken
	// from the wire: the receiver may get a little less than the relay
	// counted as written, never more.
	for _, c := range []struct {
		name    string
		conn    *net.TCPConn
		counted int64
	}{{"upstream", f.upstream, r.Up}, {"client", f.client, r.Down}} {
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, err := io.ReadAll(c.conn)
		got := append(first[c.conn], rest...)
		if err != nil && !isResetErr(err) {
			t.Errorf("%s: %v after the cut, want EOF or reset", c.name, err)
		}
		if int64(len(got)) > c.counted || len(got) < 1 || c.counted > burst+burst/8 {
			t.Errorf("%s received %d bytes, result counts %d; want at most the count, about the %d-byte burst", c.name, len(got), c.counted, burst)
		}
	}
}

// TestLimitedCutBeforeStart: a context already done ends the relay at
// once.
func TestLimitedCutBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := startLimited(t, ctx, relay.Limits{Up: rate.NewLimiter(1, 1)})
	r := f.wait(t, 2*time.Second)
	if r.Up != 0 || r.Down != 0 {
		t.Errorf("Result = %+v, want no bytes", r)
	}
}

func isResetErr(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// TestLimitedNotIdle: a paced flow whose data is all queued already (the
// kernel sees no new receives while the limiter lets it out) is moving,
// not idle: the idle timeout must not end it.
func TestLimitedNotIdle(t *testing.T) {
	const (
		size = 4 << 10
		idle = 1500 * time.Millisecond
	)
	// 1 KiB/s: the 4 KiB, sent at once, take 3 s to pass, a chunk a
	// second.
	lim := relay.Limits{Up: rate.NewLimiter(1<<10, 1<<10)}
	client, proxyClient := tcpPair(t)
	proxyUp, upstream := tcpPair(t)
	done := make(chan relay.Result, 1)
	relay.StartLimited(context.Background(), proxyClient, proxyUp, idle, lim, relay.Counts{}, func(r relay.Result) { done <- r })
	if _, err := client.Write(randomBytes(t, size)); err != nil {
		t.Fatal(err)
	}
	upstream.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	got, err := io.ReadFull(upstream, make([]byte, size))
	t.Logf("%d bytes in %v", got, time.Since(start))
	if err != nil {
		t.Errorf("upstream read %d of %d bytes: %v", got, size, err)
	}
	client.Close()
	upstream.Close()
	select {
	case r := <-done:
		if r.Idle {
			t.Errorf("Result = %+v: a paced flow moving data was ended as idle", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
	}
}
