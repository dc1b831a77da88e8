//go:build linux

package soak

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The setup, sampling and checks shared by the soak tests.

// ---------------------------------------------------------------------
// One soak run's setup.

type soakRun struct {
	p    soakParams
	topo *topology
	srv  soakServers
	d    *soakDaemon
	base soakRes
	pm0  nstest.Metrics  // after the warm-up, before the load
	srv0 soakServerStats // the same
}

// newSoakRun builds the topology, the pattern server and the daemon
// (alice on wan1, bob on wan2), warms the daemon up with a few tunnels of
// each user and takes its baseline.
func newSoakRun(t *testing.T) *soakRun {
	t.Helper()
	nstest.RequireRoot(t)
	p := soakParamsFromEnv(t)
	t.Log(p)
	// This process holds the clients' sockets (one per tunnel, and two
	// descriptors per handshake in flight); the daemon two per tunnel.
	ensureNoFile(t, 0, uint64(p.tunnels+soakFDSlack+2*p.openConc), "the test process", 1)
	// The daemon starts with this process's hard limit: fail before
	// building anything if it cannot have its two per tunnel.
	daemonFDs := uint64(2*p.tunnels + soakFDSlack)
	ensureNoFile(t, 0, daemonFDs, "the daemon", 2)
	r := &soakRun{p: p, topo: newSoakTopology(t)}
	// The server side of a tunnel the daemon cut while its NIC was down
	// gets no FIN (until the NIC is back); it ends at the idle bound,
	// which must exceed a tunnel's longest pause plus a slow exchange.
	r.srv = startSoakServers(t, r.topo.U, 3*p.interval+p.timeout, p.maxChunk)
	bin := soakBinary(t, p.race)
	r.d = startSoakDaemon(t, r.topo, bin, soakConfig(t, "10s", "", soakAlice, soakBob), daemonFDs)

	warm := startSoakLoad(t, r.topo, soakLoadParams{tunnels: 0, interval: p.interval, maxChunk: p.maxChunk,
		timeout: p.timeout, openConc: 1, maxBackoff: p.maxBackoff})
	for range 3 {
		for _, u := range []nstest.User{soakAlice, soakBob} {
			if auth, rep, err := warm.probe(u); err != nil || auth != 0 || rep != 0 {
				t.Fatalf("warm-up tunnel as %s: auth %d reply %d, %v", u.Name, auth, rep, err)
			}
		}
	}
	warm.finish(t, time.Second)
	r.base = r.d.settledResources(t, 20*time.Second)
	r.pm0 = nstest.Scrape(t, r.topo.P, soakMetrics)
	r.srv0 = r.srv.stats(t)
	t.Logf("daemon pid %d, baseline after warm-up: %v (%s)", r.d.pid(), r.base, r.d.memStats())
	return r
}

// startLoad starts the load of alice and bob and waits until every tunnel
// has verified an exchange.
func (r *soakRun) startLoad(t *testing.T) *soakLoad {
	t.Helper()
	l := startSoakLoad(t, r.topo, r.p.load(), soakAlice, soakBob)
	took := l.waitAllVerified(t, l.start, max(time.Minute, time.Duration(r.p.tunnels)*5*time.Millisecond))
	t.Logf("%d tunnels open and verified in %v", r.p.tunnels, took.Round(time.Millisecond))
	return l
}

// alive fails the test at once if the daemon has exited.
func (r *soakRun) alive(t *testing.T) {
	t.Helper()
	if !r.d.running() {
		t.Fatalf("daemon exited during the load: %v; log tail:\n%s", r.d.err, r.d.sink.tail(40))
	}
}

// hold keeps the load running for d, watching the daemon.
func (r *soakRun) hold(t *testing.T, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		r.alive(t)
		time.Sleep(min(time.Second, time.Until(end)))
	}
	r.alive(t)
}

// drain waits (bounded) until the daemon reports no active flow.
func (r *soakRun) drain(t *testing.T) {
	t.Helper()
	var active float64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		active = 0
		for _, s := range nstest.Scrape(t, r.topo.P, soakMetrics).Series("ifsocks_active_flows") {
			active += s.Value
		}
		if active == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ifsocks_active_flows sums to %v 30 s after the load stopped, want 0", active)
		}
	}
}

// checkBaseline waits for the daemon's resources to come back and logs
// the comparison.
func (r *soakRun) checkBaseline(t *testing.T, peak soakRes) {
	t.Helper()
	after, took := r.d.waitBaseline(t, r.base, peak.goroutines, r.p.settle, !r.p.race)
	rss := fmt.Sprintf("+%.1f MiB RSS", float64(soakRSSTolerance(r.base, peak.goroutines))/1024)
	if r.p.race {
		rss = "RSS not judged for a -race build"
	}
	t.Logf("daemon resources: baseline %v; peak %v; after %v (%v after the load drained; tolerance +%d fds, +%d goroutines, %s); Go runtime after: %s",
		r.base, peak, after, took.Round(time.Millisecond), soakFDTolerance, soakGTolerance, rss, r.d.memStats())
}

// ---------------------------------------------------------------------
// Resource sampling during a load.

type soakSampler struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	peak    soakRes
	rss     []int64 // KiB, one per sample
	minLive int
	sumLive int
	samples int
	errs    []string
}

// sample reads the daemon's resources and the load's live tunnels every
// period until stop.
func (r *soakRun) sample(t *testing.T, l *soakLoad) *soakSampler {
	s := &soakSampler{stopc: make(chan struct{}), minLive: r.p.tunnels}
	s.wg.Go(func() {
		tk := time.NewTicker(r.p.sample)
		defer tk.Stop()
		for {
			select {
			case <-s.stopc:
				return
			case <-tk.C:
			}
			res, err := r.d.resources()
			live := l.liveCount("")
			s.mu.Lock()
			if err != nil {
				s.errs = append(s.errs, err.Error())
			} else {
				s.samples++
				s.peak.fds = max(s.peak.fds, res.fds)
				s.peak.goroutines = max(s.peak.goroutines, res.goroutines)
				s.peak.rssKiB = max(s.peak.rssKiB, res.rssKiB)
				s.rss = append(s.rss, res.rssKiB)
			}
			s.minLive = min(s.minLive, live)
			s.sumLive += live
			s.mu.Unlock()
		}
	})
	t.Cleanup(s.stop)
	return s
}

func (s *soakSampler) stop() {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
	s.wg.Wait()
}

// result stops the sampler and checks that the daemon really held the
// tunnels at once: with N tunnels it holds 2N sockets.
func (s *soakSampler) result(t *testing.T, base soakRes, tunnels int) soakRes {
	t.Helper()
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		t.Errorf("%d resource samples failed, first: %s", len(s.errs), s.errs[0])
	}
	if s.samples == 0 {
		t.Errorf("no resource sample during the load")
	} else if s.peak.fds < base.fds+tunnels {
		t.Errorf("daemon held at most %d fds during the load of %d tunnels (baseline %d), want >= %d: the tunnels were not concurrent",
			s.peak.fds, tunnels, base.fds, base.fds+tunnels)
	}
	if s.samples > 0 {
		t.Logf("during the load: %d samples, live tunnels %d of %d at the fewest, %d on average (the rest between a clean end and the next handshake)",
			s.samples, s.minLive, tunnels, s.sumLive/s.samples)
	}
	return s.peak
}

// plateau checks that the daemon's RSS levelled off during a load at
// constant concurrency: the highest sample of the last quarter may exceed
// the highest of the second quarter (the first holds the ramp) by 10% plus
// 8 MiB at most. Memory kept per flow grows with the flows and fails it.
func (s *soakSampler) plateau(t *testing.T, judge bool) {
	t.Helper()
	s.mu.Lock()
	rss := slices.Clone(s.rss)
	s.mu.Unlock()
	if len(rss) < 8 {
		t.Logf("RSS plateau: only %d samples, not judged", len(rss))
		return
	}
	q := len(rss) / 4
	early, late := slices.Max(rss[q:2*q]), slices.Max(rss[3*q:])
	limit := early + early/10 + 8<<10
	t.Logf("RSS during the load: %.1f MiB at most in its second quarter, %.1f MiB in its last (limit %.1f MiB)",
		float64(early)/1024, float64(late)/1024, float64(limit)/1024)
	if judge && late > limit {
		t.Errorf("daemon RSS kept growing at constant concurrency: %.1f MiB at most in the second quarter of the load, %.1f MiB in the last; want <= %.1f MiB",
			float64(early)/1024, float64(late)/1024, float64(limit)/1024)
	}
}

// ---------------------------------------------------------------------
// Checks shared by the tests.

// wantMetricsMatch compares the daemon's per-user flow and byte counters
// since the baseline with what the clients counted. For the users in
// exact (no tunnel of theirs may fail) they must be equal: flows with
// outcome ok and clean ends, bytes each way. For the others a clean end
// may be counted as cut by the daemon (the NIC went down after the last
// byte but before the client's close), so ok may only be lower. outcomesOK
// lists the outcomes allowed besides "ok".
func (r *soakRun) wantMetricsMatch(t *testing.T, l *soakLoad, exact func(user string) bool, outcomesOK ...string) nstest.Metrics {
	t.Helper()
	pm := nstest.Scrape(t, r.topo.P, soakMetrics)
	delta := func(name string, labels map[string]string) float64 {
		v1, _ := pm.Get(name, labels)
		v0, _ := r.pm0.Get(name, labels)
		return v1 - v0
	}
	for _, u := range l.usersCopy() {
		lb := func(k, v string) map[string]string {
			return map[string]string{"user": u.u.Name, "interface": u.u.Interface, k: v}
		}
		flows := lb("outcome", "ok")
		flows["protocol"] = "socks5"
		ok, clean := delta("ifsocks_flows_total", flows), float64(u.cleanClosed.Load())
		if !exact(u.u.Name) {
			if ok > clean {
				t.Errorf("%s: ifsocks_flows_total{outcome=ok} grew by %v, more than the %v tunnels the client ended cleanly", u.u.Name, ok, clean)
			} else if ok < clean {
				t.Logf("%s: %v of the tunnels the client ended cleanly were counted as cut by the daemon (ok +%v)", u.u.Name, clean-ok, ok)
			}
			continue
		}
		if ok != clean {
			t.Errorf("%s: ifsocks_flows_total{outcome=ok} grew by %v, the client ended %v tunnels cleanly", u.u.Name, ok, clean)
		}
		if got, want := delta("ifsocks_bytes_total", lb("direction", "up")), float64(u.wireUp.Load()); got != want {
			t.Errorf("%s: ifsocks_bytes_total{direction=up} grew by %.0f, the client sent %.0f", u.u.Name, got, want)
		}
		if got, want := delta("ifsocks_bytes_total", lb("direction", "down")), float64(u.wireDown.Load()); got != want {
			t.Errorf("%s: ifsocks_bytes_total{direction=down} grew by %.0f, the client received %.0f", u.u.Name, got, want)
		}
	}
	for _, s := range pm.Series("ifsocks_flows_total") {
		if o := s.Labels["outcome"]; o != "ok" && !slices.Contains(outcomesOK, o) {
			if d := delta("ifsocks_flows_total", s.Labels); d != 0 {
				t.Errorf("ifsocks_flows_total%v grew by %v during the load, want no %q flows", s.Labels, d, o)
			}
		}
	}
	return pm
}

// allUsers is wantMetricsMatch's exact for a load without failures.
func allUsers(string) bool { return true }

// wantServerClean checks the pattern servers saw no corruption and, unless
// cuts are expected, no timeout or error either; it returns their counters
// since the baseline.
func (r *soakRun) wantServerClean(t *testing.T, cutsExpected bool) soakServerStats {
	t.Helper()
	st := r.srv.stats(t)
	if st.Corrupt > 0 {
		t.Errorf("pattern servers: %d corrupt streams (first error: %s)", st.Corrupt, st.FirstErr)
	}
	if !cutsExpected && st.Timeouts+st.OtherErrs > 0 {
		t.Errorf("pattern servers: %d timeouts, %d other errors (first: %s), want none", st.Timeouts, st.OtherErrs, st.FirstErr)
	}
	st.Accepted -= r.srv0.Accepted
	st.CleanEnds -= r.srv0.CleanEnds
	st.UpVerified -= r.srv0.UpVerified
	st.DownSent -= r.srv0.DownSent
	return st
}

func (r *soakRun) logBytes(t *testing.T, l *soakLoad, st soakServerStats, elapsed time.Duration) {
	t.Helper()
	opened, clean, exchanges, fails, connFails, corrupt, _, _, verDown := l.totals()
	t.Logf("in %v: %d tunnels opened, %d ended cleanly, %d exchanges; verified %.1f MB up (server) + %.1f MB down (client) = %.1f MB; %d tunnel failures, %d handshake failures, %d corrupt",
		elapsed.Round(time.Millisecond), opened, clean, exchanges, float64(st.UpVerified)/1e6, float64(verDown)/1e6,
		float64(st.UpVerified+verDown)/1e6, fails, connFails, corrupt)
	t.Logf("pattern servers: %d tunnels accepted, %d ended cleanly, %d timeouts, %d other errors, %d still open",
		st.Accepted, st.CleanEnds, st.Timeouts, st.OtherErrs, st.Open)
	stall, at := l.stalls.get()
	t.Logf("longest scheduling stall (a 100 ms ticker served late; the host is shared): test process %v at %s, pattern servers %v at %s",
		stall.Round(time.Millisecond), at.Format("15:04:05.000"), st.MaxStall.Round(time.Millisecond), st.StallAt.Format("15:04:05.000"))
	l.report(t)
}
