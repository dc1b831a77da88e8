//go:build linux

package soak

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

type soakParams struct {
	long        bool
	tunnels     int
	duration    time.Duration
	reloads     int
	reloadEvery time.Duration
	flaps       int
	flapDown    time.Duration // how long wan2 stays down
	flapSteady  time.Duration // load on both NICs before each flap
	interval    time.Duration
	lifetime    time.Duration
	maxChunk    int
	race        bool
	timeout     time.Duration // one exchange or handshake
	openConc    int
	maxBackoff  time.Duration
	settle      time.Duration // bound of the wait for the baseline after the load
	sample      time.Duration // resource sampling period
}

func soakParamsFromEnv(tb testing.TB) soakParams {
	tb.Helper()
	p := soakParams{
		tunnels: 200, duration: 15 * time.Second,
		reloads: 10, reloadEvery: 800 * time.Millisecond,
		flaps: 5, flapDown: 500 * time.Millisecond, flapSteady: 700 * time.Millisecond,
		interval: 200 * time.Millisecond, lifetime: 5 * time.Second, maxChunk: 16 << 10,
		race: true, timeout: 10 * time.Second, openConc: 32, maxBackoff: 250 * time.Millisecond,
		settle: 30 * time.Second, sample: time.Second,
	}
	switch mode := os.Getenv("IFSOCKS_SOAK"); mode {
	case "", "short":
	case "long":
		p = soakParams{long: true,
			tunnels: 10000, duration: 10 * time.Minute,
			reloads: 100, reloadEvery: 5 * time.Second,
			flaps: 50, flapDown: 2 * time.Second, flapSteady: 4 * time.Second,
			interval: 2 * time.Second, lifetime: time.Minute, maxChunk: 8 << 10,
			race: false, timeout: 30 * time.Second, openConc: 128, maxBackoff: time.Second,
			settle: 4 * time.Minute, sample: 5 * time.Second,
		}
	default:
		tb.Fatalf("IFSOCKS_SOAK=%q: want \"short\" or \"long\"", mode)
	}
	envInt(tb, "IFSOCKS_SOAK_TUNNELS", &p.tunnels, 2)
	envInt(tb, "IFSOCKS_SOAK_RELOADS", &p.reloads, 0)
	envInt(tb, "IFSOCKS_SOAK_FLAPS", &p.flaps, 0)
	envInt(tb, "IFSOCKS_SOAK_CHUNK", &p.maxChunk, 1)
	envDuration(tb, "IFSOCKS_SOAK_DURATION", &p.duration, time.Second)
	envDuration(tb, "IFSOCKS_SOAK_INTERVAL", &p.interval, time.Millisecond)
	envDuration(tb, "IFSOCKS_SOAK_LIFETIME", &p.lifetime, 0)
	if v := os.Getenv("IFSOCKS_SOAK_RACE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			tb.Fatalf("IFSOCKS_SOAK_RACE=%q: want 1 or 0", v)
		}
		p.race = b
	}
	return p
}

func envInt(tb testing.TB, name string, dst *int, least int) {
	tb.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < least {
			tb.Fatalf("%s=%q: want an integer >= %d", name, v, least)
		}
		*dst = n
	}
}

func envDuration(tb testing.TB, name string, dst *time.Duration, least time.Duration) {
	tb.Helper()
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < least {
			tb.Fatalf("%s=%q: want a duration >= %v", name, v, least)
		}
		*dst = d
	}
}

func (p soakParams) String() string {
	mode := "short"
	if p.long {
		mode = "long"
	}
	return fmt.Sprintf("%s: %d tunnels, exchange every ~%v of up to %d bytes each way, tunnel life ~%v, daemon -race=%v",
		mode, p.tunnels, p.interval, p.maxChunk, p.lifetime, p.race)
}

func (p soakParams) load() soakLoadParams {
	return soakLoadParams{tunnels: p.tunnels, interval: p.interval, lifetime: p.lifetime, maxChunk: p.maxChunk,
		timeout: p.timeout, openConc: p.openConc, maxBackoff: p.maxBackoff}
}

// ---------------------------------------------------------------------
// Test 1: the soak.

// TestSoak: N tunnels, half alice (wan1) half bob (wan2), each verifying
// data both ways for the duration, tunnels ending cleanly and reopening.
// Zero failures; the daemon's counters agree byte for byte with the
// clients'; its RSS levels off during the load; afterwards its
// descriptors, goroutines and RSS are back to the baseline.
func TestSoak(t *testing.T) {
	r := newSoakRun(t)
	l := r.startLoad(t)
	smp := r.sample(t, l)
	start := time.Now()
	r.hold(t, r.p.duration)
	peak := smp.result(t, r.base, r.p.tunnels)
	smp.plateau(t, !r.p.race)
	l.finish(t, 2*r.p.timeout)
	elapsed := time.Since(start)
	r.drain(t)

	if evs := l.eventsCopy(); len(evs) > 0 {
		t.Errorf("load failures: %s", l.summarizeEvents(evs, 10))
	}
	st := r.wantServerClean(t, false)
	r.wantMetricsMatch(t, l, allUsers)
	r.logBytes(t, l, st, elapsed)
	r.checkBaseline(t, peak)
}
