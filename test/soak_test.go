package test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Soak tests: many tunnels carrying verified data through the daemon for a
// long time, under reloads and interface flaps, with the daemon's
// descriptors, goroutines and memory back to their baseline afterwards.
//
// By default they run short (CI, about a minute in all, a -race build of
// the daemon). The long versions, for a run by hand:
//
//	IFSOCKS_SOAK=long go test -count=1 -timeout 3h -run '^TestSoak' -v ./test
//
// which is 10,000 tunnels for 10 minutes, 100 reloads, 50 flaps, with a
// normal build of the daemon (the race detector's memory and CPU cost
// would dominate what a long run measures; IFSOCKS_SOAK_RACE=1 keeps it).
// Every size can be set on its own, long or short:
//
//	IFSOCKS_SOAK_TUNNELS   concurrent tunnels (short 200, long 10000)
//	IFSOCKS_SOAK_DURATION  TestSoak's load time (short 15s, long 10m)
//	IFSOCKS_SOAK_RELOADS   TestSoakReload's reloads, half broken (10, 100)
//	IFSOCKS_SOAK_FLAPS     TestSoakFlap's wan2 down/up cycles (5, 50)
//	IFSOCKS_SOAK_INTERVAL  mean pause between exchanges of a tunnel (200ms, 2s)
//	IFSOCKS_SOAK_LIFETIME  mean life of a tunnel before a clean end and a
//	                       new one; 0 keeps each for the whole run (5s, 60s)
//	IFSOCKS_SOAK_CHUNK     largest frame, bytes (16384, 8192)
//	IFSOCKS_SOAK_RACE      1: daemon built with -race (short 1, long 0)
//	IFSOCKS_SOAK_LOGDIR    keep the daemon logs there (default: a temp dir)
//
// The long run is best done with a test binary built without -race too:
// 10,000 tunnels' worth of client and server run in the test process.

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
		timeout: p.timeout, openConc: p.openConc, maxBackof: p.maxBackoff}
}

// ---------------------------------------------------------------------
// One soak run's setup.

type soakRun struct {
	p    soakParams
	topo *topology
	srv  soakServers
	d    *soakDaemon
	base soakRes
	pm0  promMetrics     // after the warm-up, before the load
	srv0 soakServerStats // the same
}

// newSoakRun builds the topology, the pattern server and the daemon
// (alice on wan1, bob on wan2), warms the daemon up with a few tunnels of
// each user and takes its baseline.
func newSoakRun(t *testing.T) *soakRun {
	t.Helper()
	requireRoot(t)
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
		timeout: p.timeout, openConc: 1, maxBackof: p.maxBackoff})
	for range 3 {
		for _, u := range []soakUser{soakAlice, soakBob} {
			if auth, rep, err := warm.probe(u); err != nil || auth != 0 || rep != 0 {
				t.Fatalf("warm-up tunnel as %s: auth %d reply %d, %v", u.name, auth, rep, err)
			}
		}
	}
	warm.finish(t, time.Second)
	r.base = r.d.settledResources(t, 20*time.Second)
	r.pm0 = scrape(t, r.topo.P, soakMetrics)
	r.srv0 = r.srv.stats(t)
	t.Logf("daemon pid %d, baseline after warm-up: %v", r.d.pid(), r.base)
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
		for _, s := range scrape(t, r.topo.P, soakMetrics).series("ifsocks_active_flows") {
			active += s.value
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
	after, took := r.d.waitBaseline(t, r.base, r.p.settle, !r.p.race)
	rss := fmt.Sprintf("+%.1f MiB RSS", float64(soakRSSTolerance(r.base))/1024)
	if r.p.race {
		rss = "RSS not judged for a -race build"
	}
	t.Logf("daemon resources: baseline %v; peak %v; after %v (%v after the load drained; tolerance +%d fds, +%d goroutines, %s)",
		r.base, peak, after, took.Round(time.Millisecond), soakFDTolerance, soakGTolerance, rss)
}

// ---------------------------------------------------------------------
// Resource sampling during a load.

type soakSampler struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	peak    soakRes
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

// ---------------------------------------------------------------------
// Checks shared by the tests.

// wantMetricsMatch compares the daemon's per-user flow and byte counters
// since the baseline with what the clients counted. For the users in
// exact (no tunnel of theirs may fail) they must be equal: flows with
// outcome ok and clean ends, bytes each way. For the others a clean end
// may be counted as cut by the daemon (the NIC went down after the last
// byte but before the client's close), so ok may only be lower. outcomesOK
// lists the outcomes allowed besides "ok".
func (r *soakRun) wantMetricsMatch(t *testing.T, l *soakLoad, exact func(user string) bool, outcomesOK ...string) promMetrics {
	t.Helper()
	pm := scrape(t, r.topo.P, soakMetrics)
	delta := func(name string, labels map[string]string) float64 {
		v1, _ := pm.get(name, labels)
		v0, _ := r.pm0.get(name, labels)
		return v1 - v0
	}
	for _, u := range l.usersCopy() {
		lb := func(k, v string) map[string]string {
			return map[string]string{"user": u.u.name, "interface": u.u.iface, k: v}
		}
		ok, clean := delta("ifsocks_flows_total", lb("outcome", "ok")), float64(u.cleanClosed.Load())
		if !exact(u.u.name) {
			if ok > clean {
				t.Errorf("%s: ifsocks_flows_total{outcome=ok} grew by %v, more than the %v tunnels the client ended cleanly", u.u.name, ok, clean)
			} else if ok < clean {
				t.Logf("%s: %v of the tunnels the client ended cleanly were counted as cut by the daemon (ok +%v)", u.u.name, clean-ok, ok)
			}
			continue
		}
		if ok != clean {
			t.Errorf("%s: ifsocks_flows_total{outcome=ok} grew by %v, the client ended %v tunnels cleanly", u.u.name, ok, clean)
		}
		if got, want := delta("ifsocks_bytes_total", lb("direction", "up")), float64(u.wireUp.Load()); got != want {
			t.Errorf("%s: ifsocks_bytes_total{direction=up} grew by %.0f, the client sent %.0f", u.u.name, got, want)
		}
		if got, want := delta("ifsocks_bytes_total", lb("direction", "down")), float64(u.wireDown.Load()); got != want {
			t.Errorf("%s: ifsocks_bytes_total{direction=down} grew by %.0f, the client received %.0f", u.u.name, got, want)
		}
	}
	for _, s := range pm.series("ifsocks_flows_total") {
		if o := s.labels["outcome"]; o != "ok" && !slices.Contains(outcomesOK, o) {
			if d := delta("ifsocks_flows_total", s.labels); d != 0 {
				t.Errorf("ifsocks_flows_total%v grew by %v during the load, want no %q flows", s.labels, d, o)
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
	l.report(t)
}

// ---------------------------------------------------------------------
// Test 1: the soak.

// TestSoak: N tunnels, half alice (wan1) half bob (wan2), each verifying
// data both ways for the duration, tunnels ending cleanly and reopening.
// Zero failures; the daemon's counters agree byte for byte with the
// clients'; afterwards its descriptors, goroutines and RSS are back to
// the baseline.
func TestSoak(t *testing.T) {
	r := newSoakRun(t)
	l := r.startLoad(t)
	smp := r.sample(t, l)
	start := time.Now()
	r.hold(t, r.p.duration)
	peak := smp.result(t, r.base, r.p.tunnels)
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

// ---------------------------------------------------------------------
// Test 2: reloads under load.

// soakBroken is a configuration file that must not load. Each also
// changes bob's password and adds or removes carol, so that if any part
// of it took effect, bob's new tunnels and the carol probe would show it.
type soakBroken struct {
	name string
	want string // in the logged error
	text func(t *testing.T, carolIn bool) string
}

func soakBrokenUsers(carolIn bool) []soakUser {
	users := []soakUser{soakAlice, soakBobBroken}
	if !carolIn {
		users = append(users, soakCarol)
	}
	return users
}

var soakBrokenFiles = []soakBroken{
	{"unknown key", "unknown key server.bogus_soak_key", func(t *testing.T, carolIn bool) string {
		return soakConfig(t, "10s", "bogus_soak_key = 1\n", soakBrokenUsers(carolIn)...)
	}},
	{"bad duration", `server.handshake_timeout: "ten seconds"`, func(t *testing.T, carolIn bool) string {
		return soakConfig(t, "ten seconds", "", soakBrokenUsers(carolIn)...)
	}},
	{"bad interface name", `users[1].interface: "eth/1"`, func(t *testing.T, carolIn bool) string {
		users := soakBrokenUsers(carolIn)
		users[1].iface = "eth/1"
		return soakConfig(t, "10s", "", users...)
	}},
	{"duplicate user", `users[2].name: "bob": duplicate of users[1]`, func(t *testing.T, carolIn bool) string {
		users := append(soakBrokenUsers(carolIn)[:2], soakBobBroken)
		return soakConfig(t, "10s", "", users...)
	}},
	{"TOML syntax", "toml: line", func(t *testing.T, carolIn bool) string {
		text := soakConfig(t, "10s", "", soakBrokenUsers(carolIn)...)
		cut := strings.Index(text, "10.231.")
		return text[:cut] + "\n" + text[cut:] // a newline inside a string
	}},
}

// TestSoakReload: the soak load runs while the daemon is reloaded, every
// other time with a broken file. Valid reloads add or remove carol (and
// change handshake_timeout); they take effect at once. Broken ones are
// logged at error level naming the key and change nothing. No tunnel
// fails, every tunnel verifies data after the last reload, and the
// daemon comes back to its baseline.
func TestSoakReload(t *testing.T) {
	r := newSoakRun(t)
	l := r.startLoad(t)
	smp := r.sample(t, l)
	start := time.Now()
	carolIn := false
	var valid, broken int
	var took []time.Duration
	var lastReload time.Time
	for i := range r.p.reloads {
		r.hold(t, r.p.reloadEvery)
		var ok bool
		var line map[string]any
		sent := time.Now()
		if i%2 == 0 {
			carolIn = !carolIn
			users, hs := []soakUser{soakAlice, soakBob}, "10s"
			if carolIn {
				users, hs = append(users, soakCarol), "11s"
			}
			r.d.writeConfig(soakConfig(t, hs, "", users...))
			ok, line = r.d.reload(t, 15*time.Second)
			if !ok {
				t.Fatalf("reload %d (valid, carol %v): failed: %v", i, carolIn, line)
			}
			if got := line["users"]; got != float64(len(users)) {
				t.Errorf("reload %d: logged users %v, want %d", i, got, len(users))
			}
			valid++
		} else {
			b := soakBrokenFiles[(i/2)%len(soakBrokenFiles)]
			r.d.writeConfig(b.text(t, carolIn))
			ok, line = r.d.reload(t, 15*time.Second)
			msg, _ := line["error"].(string)
			if ok {
				t.Fatalf("reload %d of a broken file (%s) succeeded: %v", i, b.name, line)
			}
			if line["level"] != "error" || !strings.Contains(msg, b.want) {
				t.Errorf("reload %d (%s): level %v error %q, want level error and %q", i, b.name, line["level"], msg, b.want)
			}
			broken++
		}
		took = append(took, time.Since(sent))
		lastReload = time.Now()
		l.marks.Add(1)
		// The configuration in force is the last valid one.
		auth, rep, err := l.probe(soakCarol)
		if carolIn && (err != nil || auth != 0 || rep != 0) {
			t.Errorf("after reload %d: carol (configured) got auth %d reply %d, %v; want a working tunnel", i, auth, rep, err)
		} else if !carolIn && (err != nil || auth != 1) {
			t.Errorf("after reload %d: carol (not configured) got auth %d reply %d, %v; want auth status 1", i, auth, rep, err)
		}
		if auth, rep, err := l.probe(soakBob); err != nil || auth != 0 || rep != 0 {
			t.Errorf("after reload %d: bob with his password got auth %d reply %d, %v; want a working tunnel", i, auth, rep, err)
		}
	}
	// Every tunnel is still verifying: each has an exchange after the
	// last reload.
	l.waitAllVerified(t, lastReload, 4*r.p.interval+r.p.timeout)
	peak := smp.result(t, r.base, r.p.tunnels)
	l.finish(t, 2*r.p.timeout)
	elapsed := time.Since(start)
	r.drain(t)

	if evs := l.eventsCopy(); len(evs) > 0 {
		t.Errorf("load failures across the reloads: %s", l.summarizeEvents(evs, 10))
	}
	okN, badN := r.d.sink.reloadCounts()
	if okN != valid || badN != broken {
		t.Errorf("log: %d %q and %d %q lines, want %d and %d", okN, msgReloaded, badN, msgReloadFailed, valid, broken)
	}
	st := r.wantServerClean(t, false)
	pm := r.wantMetricsMatch(t, l, allUsers)
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "success"}, float64(valid))
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "failure"}, float64(broken))
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("%d reloads (%d valid, %d broken) one per %v; SIGHUP to outcome line: median %v, max %v",
			len(took), valid, broken, r.p.reloadEvery, took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	}
	r.logBytes(t, l, st, elapsed)
	r.checkBaseline(t, peak)
}
