//go:build linux

package soak

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The soak tests' daemon: started, reloaded, measured and judged.

type soakDaemon struct {
	t       *testing.T
	topo    *topology
	cmd     *exec.Cmd
	cfgPath string
	sink    *soakSink
	done    chan struct{}
	err     error // Wait result, valid after done
}

// startSoakDaemon starts bin in P with cfg and a descriptor limit of at
// least nofile, and waits until it accepts from C and both NICs are up in its
// metrics. It is stopped with SIGTERM at the end of the test, after which
// its log must hold no data race, no panic and no password.
func startSoakDaemon(t *testing.T, topo *topology, bin, cfg string, nofile uint64) *soakDaemon {
	t.Helper()
	dir := t.TempDir()
	logDir := dir
	if d := os.Getenv("IFSOCKS_SOAK_LOGDIR"); d != "" {
		logDir = d // kept after the run, for the long runs' evidence
	}
	sink, err := newSoakSink(filepath.Join(logDir, fmt.Sprintf("%s-%d.log", t.Name(), os.Getpid())), soakPasswords)
	if err != nil {
		t.Fatal(err)
	}
	d := &soakDaemon{t: t, topo: topo, cfgPath: filepath.Join(dir, "ifsocks.toml"), sink: sink, done: make(chan struct{})}
	d.writeConfig(cfg)
	d.cmd = exec.Command("ip", "netns", "exec", topo.P, bin, "-config", d.cfgPath)
	d.cmd.Env = nstest.CleanEnv
	d.cmd.Stdout, d.cmd.Stderr = sink, sink // one pipe: lines never interleave
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(d.stopAndCheck)
	// Before any load: two descriptors per tunnel.
	ensureNoFile(t, d.pid(), nofile, "the daemon", 2)
	if got, err := strconv.ParseUint(procLimit(t, d.pid(), "Max open files"), 10, 64); err != nil || got < nofile {
		t.Fatalf("daemon's Max open files is %d (%v), want >= %d", got, err, nofile)
	}
	d.waitReady(t, 15*time.Second)
	return d
}

func (d *soakDaemon) pid() int { return d.cmd.Process.Pid }

func (d *soakDaemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *soakDaemon) writeConfig(text string) {
	d.t.Helper()
	tmp := d.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, d.cfgPath); err != nil {
		d.t.Fatal(err)
	}
}

func (d *soakDaemon) waitReady(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		c, err := nstest.Dialer{NS: d.topo.C, Timeout: time.Second}.Dial("tcp", soakListen)
		if err == nil {
			c.Close()
			pm, err := nstest.ScrapeErr(d.topo.P, soakMetrics)
			up1, _ := pm.Get("ifsocks_interface_up", map[string]string{"interface": "wan1"})
			up2, _ := pm.Get("ifsocks_interface_up", map[string]string{"interface": "wan2"})
			if err == nil && up1 == 1 && up2 == 1 {
				return
			}
		}
		if !d.running() {
			t.Fatalf("daemon exited before it was ready: %v\nlog tail:\n%s", d.err, d.sink.tail(40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready (accepting on %s, wan1 and wan2 up in /metrics) after %v; log tail:\n%s",
				soakListen, limit, d.sink.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopAndCheck stops the daemon (SIGTERM must suffice) and fails the test
// on any data race report, panic, or password in its output.
func (d *soakDaemon) stopAndCheck() {
	t := d.t
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Errorf("soak daemon still running 15s after SIGTERM; killed it")
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	s := d.sink.close()
	t.Logf("daemon log: %d lines in %s", s.lines, d.sink.path)
	if s.races > 0 {
		t.Errorf("daemon output has %d \"WARNING: DATA RACE\" report(s); the first:\n%s", s.races, strings.Join(s.raceText, "\n"))
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) && ee.ExitCode() == 66 {
		t.Errorf("daemon exited with status 66: the race detector found races")
	} else if d.err != nil && !s.dumped {
		t.Errorf("daemon exited with %v after SIGTERM, want status 0", d.err)
	}
	if len(s.panics) > 0 {
		t.Errorf("daemon output has panics / fatal errors: %q", s.panics)
	}
	if s.passwordLines > 0 {
		t.Errorf("daemon log has %d lines with a password", s.passwordLines)
	}
	if t.Failed() {
		t.Logf("daemon log tail:\n%s", d.sink.tail(60))
	}
}

// reload sends SIGHUP and waits (bounded) for the outcome line.
func (d *soakDaemon) reload(tb testing.TB, limit time.Duration) (bool, map[string]any) {
	tb.Helper()
	ok0, bad0 := d.sink.reloadCounts()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		tb.Fatalf("SIGHUP: %v", err)
	}
	deadline := time.Now().Add(limit)
	for {
		ok, bad := d.sink.reloadCounts()
		if ok > ok0 || bad > bad0 {
			if ok+bad > ok0+bad0+1 {
				tb.Fatalf("one SIGHUP, %d reload outcome lines", ok+bad-ok0-bad0)
			}
			return ok > ok0, d.sink.lastReload()
		}
		if !d.running() {
			tb.Fatalf("daemon exited after SIGHUP: %v; log tail:\n%s", d.err, d.sink.tail(30))
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no reload outcome line within %v of SIGHUP; log tail:\n%s", limit, d.sink.tail(30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------
// Resources of the daemon.

type soakRes struct {
	fds        int
	goroutines int
	rssKiB     int64
}

func (r soakRes) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, RSS %.1f MiB", r.fds, r.goroutines, float64(r.rssKiB)/1024)
}

// resources reads the daemon's descriptor count (/proc/PID/fd), its
// goroutines (go_goroutines of its /metrics) and VmRSS.
func (d *soakDaemon) resources() (soakRes, error) {
	var r soakRes
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid()))
	if err != nil {
		return r, err
	}
	r.fds = len(ents)
	if r.rssKiB, err = procStatusKiB(d.pid(), "VmRSS:"); err != nil {
		return r, err
	}
	pm, err := nstest.ScrapeErr(d.topo.P, soakMetrics)
	if err != nil {
		return r, err
	}
	g, ok := pm.Get("go_goroutines", map[string]string{})
	if !ok {
		return r, fmt.Errorf("no go_goroutines in /metrics")
	}
	r.goroutines = int(g)
	return r, nil
}

func (d *soakDaemon) mustResources(tb testing.TB) soakRes {
	tb.Helper()
	r, err := d.resources()
	if err != nil {
		tb.Fatalf("daemon resources: %v", err)
	}
	return r
}

// settledResources waits (bounded) until five readings in a row are
// within the scrape's own tolerance of each other, and returns the lowest
// of them. On a loaded machine the scrape that reads go_goroutines may
// still be closing its predecessor's connection, so exact equality of
// consecutive readings would depend on scheduling.
func (d *soakDaemon) settledResources(tb testing.TB, limit time.Duration) soakRes {
	tb.Helper()
	prev, same := d.mustResources(tb), 0
	low := prev
	for deadline := time.Now().Add(limit); same < 5; {
		if time.Now().After(deadline) {
			tb.Fatalf("daemon resources did not settle within %v (now %v)", limit, prev)
		}
		time.Sleep(200 * time.Millisecond)
		next := d.mustResources(tb)
		if abs(next.fds-prev.fds) <= soakFDTolerance/2 && abs(next.goroutines-prev.goroutines) <= soakGTolerance/2 {
			same++
			low.fds, low.goroutines = min(low.fds, next.fds), min(low.goroutines, next.goroutines)
			low.rssKiB = next.rssKiB
		} else {
			same, low = 0, next
		}
		prev = next
	}
	return low
}

func abs(n int) int { return max(n, -n) }

// Tolerances of "back to baseline". The scrape that reads go_goroutines
// holds a connection (one descriptor, one or two goroutines) while it is
// served.
//
// RSS cannot come back to its baseline exactly, and a leak is told from
// the Go runtime's high-water marks by two criteria:
//   - after the load, RSS may exceed the baseline by 16 MiB plus a quarter
//     of the baseline plus 2 KiB per goroutine of the peak. The runtime
//     never frees a goroutine's descriptor (golang/go#9869, #34457: about
//     0.45 KiB each stays in the live heap, and the spans holding them
//     fragment the heap), and returns freed pages to the kernel lazily
//     (the background scavenger, after a GC; an idle daemon is collected
//     only by the forced GC every 2 minutes, so the long runs wait up to 4
//     minutes). Measured: 9,900 tunnels (19,800 goroutines) left a daemon
//     at 55-57 MiB from 16 MiB, whether 100,000 or 300,000 tunnels had
//     passed, i.e. about 2 KiB per peak goroutine and nothing per flow.
//   - during the load, at constant concurrency, RSS must level off:
//     soakPlateau compares the end of the run with its second quarter, so
//     memory kept per flow (which grows with the flows, not with the
//     concurrency) shows up there.
//
// RSS is not judged for a -race build: ThreadSanitizer's shadow memory and
// its own allocator only grow (a 200-tunnel run took one from 47 to 116
// MiB, and it was still growing after the load had ended).
const (
	soakFDTolerance = 2
	soakGTolerance  = 2
)

// soakRSSTolerance is the RSS, in KiB, that may remain above the baseline
// after a load that peaked at peakG goroutines.
func soakRSSTolerance(base soakRes, peakG int) int64 {
	return 16<<10 + base.rssKiB/4 + 2*int64(max(0, peakG-base.goroutines))
}

func withinBaseline(base, now soakRes, peakG int, judgeRSS bool) bool {
	return now.fds <= base.fds+soakFDTolerance && now.goroutines <= base.goroutines+soakGTolerance &&
		(!judgeRSS || now.rssKiB <= base.rssKiB+soakRSSTolerance(base, peakG))
}

// waitBaseline waits (bounded) for the daemon to come back to base after a
// load, and fails the test with the evidence if it does not: the extra
// descriptors and, from a SIGQUIT goroutine dump, where the goroutines sit.
func (d *soakDaemon) waitBaseline(t *testing.T, base soakRes, peakG int, limit time.Duration, judgeRSS bool) (soakRes, time.Duration) {
	t.Helper()
	start := time.Now()
	var now soakRes
	for {
		now = d.mustResources(t)
		if withinBaseline(base, now, peakG, judgeRSS) {
			return now, time.Since(start)
		}
		if time.Since(start) > limit {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("daemon not back to its baseline %v within %v: now %v (tolerance +%d fds, +%d goroutines, +%.1f MiB RSS); Go runtime: %s",
		base, limit, now, soakFDTolerance, soakGTolerance, float64(soakRSSTolerance(base, peakG))/1024, d.memStats())
	if now.fds > base.fds+soakFDTolerance {
		t.Logf("daemon descriptors by kind: %v", fdKinds(d.pid()))
		if out, err := nstest.IPErr("netns", "exec", d.topo.P, "ss", "-tanH", "state", "all"); err == nil {
			t.Logf("TCP sockets in P by state: %v", countStates(out))
		}
	}
	if now.goroutines > base.goroutines+soakGTolerance {
		t.Logf("goroutine dump of the daemon (SIGQUIT), by top frame:\n%s", d.goroutineDump())
	}
	return now, time.Since(start)
}

// memStats summarises the Go runtime's view of the daemon's memory, to
// tell a leak (live heap) from memory the runtime has freed but not yet
// returned to the kernel (idle minus released).
func (d *soakDaemon) memStats() string {
	pm, err := nstest.ScrapeErr(d.topo.P, soakMetrics)
	if err != nil {
		return err.Error()
	}
	v := func(name string) float64 { x, _ := pm.Get(name, map[string]string{}); return x }
	mib := func(name string) string { return fmt.Sprintf("%.1f", v("go_memstats_"+name+"_bytes")/(1<<20)) }
	return fmt.Sprintf("MiB: heap alloc %s inuse %s idle %s released %s; stacks %s; runtime sys %s; %v GCs so far",
		mib("heap_alloc"), mib("heap_inuse"), mib("heap_idle"), mib("heap_released"), mib("stack_inuse"),
		mib("sys"), v("go_gc_duration_seconds_count"))
}

// goroutineDump sends SIGQUIT (the Go runtime prints every goroutine and
// exits) and summarises the dump by each goroutine's first frame.
func (d *soakDaemon) goroutineDump() string {
	d.sink.startDump()
	_ = d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
	}
	return d.sink.dumpSummary()
}

func procStatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// procLimit returns the soft limit column of a line of /proc/PID/limits.
func procLimit(tb testing.TB, pid int, name string) string {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}

func fdKinds(pid int) map[string]int {
	out := map[string]int{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		kind, _, _ := strings.Cut(target, ":")
		out[kind]++
	}
	return out
}

func countStates(ss string) map[string]int {
	out := map[string]int{}
	for _, line := range strings.Split(ss, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			out[f[0]]++
		}
	}
	return out
}
