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
		wantUp, wantDown time.Duration // 0: unpaced
	}{
		{"both directions", relay.Limits{Up: lim(), Down: lim()}, 2 * time.Second, 2 * time.Second},
		{"up only", relay.Limits{Up: lim()}, 2 * time.Second, 0},
		{"down only", relay.Limits{Down: lim()}, 0, 2 * time.Second},
		{"one limiter for both", relay.Limits{Up: shared, Down: shared}, 4 * time.Second, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startLimited(t, context.Background(), tt.lim)
			up, down := randomBytes(t, size), randomBytes(t, size)
			tUp, tDown := transfer(t, f, up, down)
			t.Logf("up %v, down %v", tUp, tDown)
			for _, c := range []struct {
				dir       string
				got, want time.Duration
			}{{"up", tUp, tt.wantUp}, {"down", tDown, tt.wantDown}} {
				switch {
				case c.want == 0 && c.got > 1500*time.Millisecond:
					t.Errorf("unpaced direction %s took %v", c.dir, c.got)
				case c.want > 0 && (c.got < c.want*85/100 || c.got > c.want*3/2):
					t.Errorf("paced direction %s took %v, want about %v", c.dir, c.got, c.want)
				}
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
	time.Sleep(300 * time.Millisecond) // both directions now wait for tokens
	if !f.running() {
		t.Fatal("relay ended before the cut")
	}
	cut := time.Now()
	cancel()
	r := f.wait(t, 2*time.Second)
	if el := time.Since(cut); el > time.Second {
		t.Errorf("relay ended %v after the cut", el)
	}
	if !errors.Is(r.Err, context.Canceled) {
		t.Errorf("Result.Err = %v, want context.Canceled", r.Err)
	}
	// What crossed before the cut is what the result counts, and it is
	// about one burst, not the whole payload.
	for _, c := range []struct {
		name    string
		conn    *net.TCPConn
		counted int64
	}{{"upstream", f.upstream, r.Up}, {"client", f.client, r.Down}} {
		c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, err := io.ReadAll(c.conn)
		if err != nil && !isResetErr(err) {
			t.Errorf("%s: %v after the cut, want EOF or reset", c.name, err)
		}
		if int64(len(got)) != c.counted || len(got) < 1 || len(got) > burst+burst/8 {
			t.Errorf("%s received %d bytes, result counts %d; want the same, about the %d-byte burst", c.name, len(got), c.counted, burst)
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
