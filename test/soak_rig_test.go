package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The soak tests' rig: a C/P/U topology of their own (names "ifss-<pid>-<n>-",
// so they never meet the package's "ifst-" namespaces), a daemon built with
// -race when asked, its log scanned line by line into a file instead of
// memory (a long run writes hundreds of thousands of flow lines), and the
// daemon's descriptors, goroutines and RSS.

const (
	soakPrefix    = "ifss-"
	soakReaperEnv = "IFSS_REAPER_FOR_PID"
	soakListen    = proxyListen4
	soakMetrics   = "127.0.0.1:9810"
)

// Copies of the test binary started with soakReaperEnv or soakServerEnv
// are the soak tests' reaper and pattern servers; they must not run
// TestMain (which would start tests).
func init() {
	if pid := os.Getenv(soakReaperEnv); pid != "" {
		os.Exit(soakReap(pid))
	}
	if spec := os.Getenv(soakServerEnv); spec != "" {
		os.Exit(soakServerMain(spec))
	}
}

// soakReap waits for EOF on stdin (its parent, the test process, exited
// however it exited) and removes what the soak tests of that process left.
func soakReap(pidStr string) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return 2
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if removeSoakOf(pid) != nil {
		return 1
	}
	return 0
}

// removeSoakOf deletes the namespaces, /etc/netns directories and temporary
// directories named for the soak tests of process pid.
func removeSoakOf(pid int) error {
	mine := fmt.Sprintf("%s%d-", soakPrefix, pid)
	var errs []error
	for _, dir := range []string{"/run/netns", "/etc/netns", os.TempDir()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), mine) {
				continue
			}
			if dir == "/run/netns" {
				errs = append(errs, deleteNetns(e.Name()))
			} else {
				errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}

var soakReaperOnce sync.Once

// soakHousekeeping removes what dead soak runs left (their pid is in the
// names) and starts this process's reaper, once.
func soakHousekeeping(tb testing.TB) {
	tb.Helper()
	soakReaperOnce.Do(func() {
		seen := map[int]bool{}
		for _, dir := range []string{"/run/netns", "/etc/netns", os.TempDir()} {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				rest, ok := strings.CutPrefix(e.Name(), soakPrefix)
				if !ok {
					continue
				}
				pidStr, _, _ := strings.Cut(rest, "-")
				pid, err := strconv.Atoi(pidStr)
				if err != nil || pid <= 0 || pid == os.Getpid() || pidAlive(pid) || seen[pid] {
					continue
				}
				seen[pid] = true
				if err := removeSoakOf(pid); err != nil {
					tb.Logf("removing what soak run %d left: %v", pid, err)
				}
			}
		}
		startSoakReaper(tb)
	})
}

// startSoakReaper starts the reaper on a pipe whose write end this process
// holds until it exits (close-on-exec, so no child inherits it).
func startSoakReaper(tb testing.TB) {
	self, err := os.Executable()
	if err != nil {
		tb.Logf("no soak reaper: %v", err)
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		tb.Logf("no soak reaper: %v", err)
		return
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), soakReaperEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Logf("no soak reaper: %v", err)
		r.Close()
		w.Close()
		return
	}
	r.Close()
	soakReaperPipe = w // kept open, and reachable, for the life of the process
	go func() { _ = cmd.Wait() }()
}

var soakReaperPipe *os.File

// ---------------------------------------------------------------------
// Topology.

var soakSeq atomic.Int32

// newSoakTopology builds a C/P/U triple like the package's (wan1 and wan2
// in P, strict rp_filter in U) under soak names, removed at the end of
// the test. Ports: C and P get a wide ephemeral range and tcp_tw_reuse,
// since a long run opens hundreds of thousands of connections.
func newSoakTopology(t *testing.T) *topology {
	t.Helper()
	soakHousekeeping(t)
	base := fmt.Sprintf("%s%d-%d-", soakPrefix, os.Getpid(), soakSeq.Add(1))
	topo := &topology{C: base + "c", P: base + "p", U: base + "u"}
	t.Cleanup(func() {
		if err := topo.destroy(); err != nil {
			t.Errorf("soak topology teardown: %v", err)
		}
	})
	if err := topo.build(); err != nil {
		t.Fatalf("soak topology: %v", err)
	}
	for _, ns := range []string{topo.C, topo.P} {
		if err := sysctl(ns, "net.ipv4.ip_local_port_range=10000 65000", "net.ipv4.tcp_tw_reuse=1",
			"net.core.somaxconn=16384"); err != nil {
			t.Fatal(err)
		}
	}
	return topo
}

// setWan2 takes wan2 in P down, or brings it back with what an
// administrative down removes: its IPv6 address and both default routes.
func setWan2(topo *topology, up bool) error {
	if !up {
		_, err := ipCmd("-n", topo.P, "link", "set", "wan2", "down")
		return err
	}
	for _, s := range [][]string{
		{"-n", topo.P, "link", "set", "wan2", "up"},
		{"-n", topo.P, "addr", "replace", "10.231.2.1/24", "dev", "wan2"},
		{"-n", topo.P, "-6", "addr", "replace", "fd31:2::1/64", "dev", "wan2", "nodad"},
		{"-n", topo.P, "route", "replace", "default", "via", "10.231.2.2", "dev", "wan2", "metric", "200"},
		{"-n", topo.P, "-6", "route", "replace", "default", "via", "fd31:2::2", "dev", "wan2", "metric", "200"},
	} {
		if _, err := ipCmd(s...); err != nil {
			return err
		}
	}
	return nil
}

// ---------------------------------------------------------------------
// The daemon binary.

var (
	soakBinMu sync.Mutex
	soakBins  = map[bool]string{}
)

// soakBinary builds the daemon once per process and flavour (-race or
// not) into a directory the reaper removes when the process exits.
func soakBinary(t *testing.T, race bool) string {
	t.Helper()
	soakBinMu.Lock()
	defer soakBinMu.Unlock()
	if bin, ok := soakBins[race]; ok {
		return bin
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if err := openSources(root); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-bin", soakPrefix, os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	args, bin := []string{"build"}, filepath.Join(dir, "ifsocks")
	if race {
		args, bin = append(args, "-race"), bin+"-race"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, goBin, append(args, "-o", bin, ".")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), root, err, out)
	}
	// The race requirement rests on this binary really being instrumented.
	out, err := exec.CommandContext(ctx, goBin, "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m %s: %v\n%s", bin, err, out)
	}
	if got := strings.Contains(string(out), "-race=true"); got != race {
		t.Fatalf("%s: built with -race=%v, want %v (go version -m:\n%s)", bin, got, race, out)
	}
	t.Logf("built %s in %v", bin, time.Since(start).Round(time.Millisecond))
	soakBins[race] = bin
	return bin
}

// ---------------------------------------------------------------------
// Configuration.

// soakUser is a user of the soak daemon; passwords are unique so the log
// can be searched for them.
type soakUser struct {
	name, pass, iface string
	hashed            bool
}

var (
	soakAlice = soakUser{name: "alice", pass: "soak-alice-Pw-6c1d42", iface: "wan1", hashed: true}
	soakBob   = soakUser{name: "bob", pass: "soak-bob-Pw-93ae07", iface: "wan2"}
	soakCarol = soakUser{name: "carol", pass: "soak-carol-Pw-0b7f5e", iface: "wan1"}
	// bob's password in the broken files: if any of them were applied,
	// every new tunnel of bob would be refused.
	soakBobBroken = soakUser{name: "bob", pass: "soak-bob-Broken-Pw-51c9", iface: "wan2"}
)

var soakPasswords = []string{soakAlice.pass, soakBob.pass, soakCarol.pass, soakBobBroken.pass}

// soakConfig is the text of a soak daemon's configuration: serverExtra
// goes into [server]; users are written in order.
func soakConfig(tb testing.TB, handshake string, serverExtra string, users ...soakUser) string {
	tb.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\nlisten = [%q]\nhandshake_timeout = %q\nidle_timeout = \"5m\"\nconnect_timeout = \"5s\"\nshutdown_timeout = \"5s\"\n%s",
		soakListen, handshake, serverExtra)
	fmt.Fprintf(&b, "\n[metrics]\nlisten = %q\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n", soakMetrics)
	for _, u := range users {
		fmt.Fprintf(&b, "\n[[users]]\nname = %q\n", u.name)
		if u.hashed {
			fmt.Fprintf(&b, "password_hash = %q\n", soakHash(tb, u.pass))
		} else {
			fmt.Fprintf(&b, "password = %q\n", u.pass)
		}
		fmt.Fprintf(&b, "interface = %q\n", u.iface)
	}
	return b.String()
}

var soakHashes sync.Map // password -> bcrypt hash (minimum cost)

func soakHash(tb testing.TB, pass string) string {
	tb.Helper()
	if h, ok := soakHashes.Load(pass); ok {
		return h.(string)
	}
	h, err := bcryptMin(pass)
	if err != nil {
		tb.Fatal(err)
	}
	soakHashes.Store(pass, h)
	return h
}

// ---------------------------------------------------------------------
// The daemon process.

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
	d.cmd.Env = cleanEnv
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
		c, err := nsDialer{ns: d.topo.C, timeout: time.Second}.Dial("tcp", soakListen)
		if err == nil {
			c.Close()
			pm, err := scrapeTry(d.topo.P, soakMetrics)
			up1, _ := pm.get("ifsocks_interface_up", map[string]string{"interface": "wan1"})
			up2, _ := pm.get("ifsocks_interface_up", map[string]string{"interface": "wan2"})
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
	pm, err := scrapeTry(d.topo.P, soakMetrics)
	if err != nil {
		return r, err
	}
	g, ok := pm.get("go_goroutines", map[string]string{})
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

// settledResources waits (bounded) until the descriptor and goroutine
// counts have not changed for a second, and returns them.
func (d *soakDaemon) settledResources(tb testing.TB, limit time.Duration) soakRes {
	tb.Helper()
	prev, same := d.mustResources(tb), 0
	for deadline := time.Now().Add(limit); same < 5; {
		if time.Now().After(deadline) {
			tb.Fatalf("daemon resources did not settle within %v (now %v)", limit, prev)
		}
		time.Sleep(200 * time.Millisecond)
		next := d.mustResources(tb)
		if next.fds == prev.fds && next.goroutines == prev.goroutines {
			same++
		} else {
			same = 0
		}
		prev = next
	}
	return prev
}

// Tolerances of "back to baseline": the scrape that reads go_goroutines
// holds a connection (one descriptor, one or two goroutines) while it is
// served. Go returns freed memory to the kernel gradually (the background
// scavenger, after a GC, and an idle daemon is only collected by the
// forced GC every 2 minutes), so RSS may stay above its baseline by the
// tolerance, and the long runs wait up to 4 minutes for it. RSS is not
// judged for a -race build: ThreadSanitizer's shadow memory and its own
// allocator only grow (a 200-tunnel run took one from 47 to 116 MiB, and
// it was still growing after the load had ended).
const (
	soakFDTolerance = 2
	soakGTolerance  = 2
)

// soakRSSTolerance is the RSS, in KiB, that may remain above the baseline:
// 16 MiB plus a quarter of the baseline.
func soakRSSTolerance(base soakRes) int64 { return 16<<10 + base.rssKiB/4 }

func withinBaseline(base, now soakRes, judgeRSS bool) bool {
	return now.fds <= base.fds+soakFDTolerance && now.goroutines <= base.goroutines+soakGTolerance &&
		(!judgeRSS || now.rssKiB <= base.rssKiB+soakRSSTolerance(base))
}

// waitBaseline waits (bounded) for the daemon to come back to base after a
// load, and fails the test with the evidence if it does not: the extra
// descriptors and, from a SIGQUIT goroutine dump, where the goroutines sit.
func (d *soakDaemon) waitBaseline(t *testing.T, base soakRes, limit time.Duration, judgeRSS bool) (soakRes, time.Duration) {
	t.Helper()
	start := time.Now()
	var now soakRes
	for {
		now = d.mustResources(t)
		if withinBaseline(base, now, judgeRSS) {
			return now, time.Since(start)
		}
		if time.Since(start) > limit {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("daemon not back to its baseline %v within %v: now %v (tolerance +%d fds, +%d goroutines, +%.1f MiB RSS)",
		base, limit, now, soakFDTolerance, soakGTolerance, float64(soakRSSTolerance(base))/1024)
	if now.fds > base.fds+soakFDTolerance {
		t.Logf("daemon descriptors by kind: %v", fdKinds(d.pid()))
		if out, err := ipCmd("netns", "exec", d.topo.P, "ss", "-tanH", "state", "all"); err == nil {
			t.Logf("TCP sockets in P by state: %v", countStates(out))
		}
	}
	if now.goroutines > base.goroutines+soakGTolerance {
		t.Logf("goroutine dump of the daemon (SIGQUIT), by top frame:\n%s", d.goroutineDump())
	}
	return now, time.Since(start)
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

// ensureNoFile makes the soft RLIMIT_NOFILE of process pid (0: this one)
// at least need, raising its hard limit too if it must and may. Without
// CAP_SYS_RESOURCE a hard limit cannot grow, and the test fails saying
// how many tunnels would fit.
func ensureNoFile(tb testing.TB, pid int, need uint64, what string, perTunnel uint64) {
	tb.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		tb.Fatalf("RLIMIT_NOFILE of %s: %v", what, err)
	}
	if old.Cur >= need {
		return
	}
	lim := unix.Rlimit{Cur: need, Max: max(old.Max, need)}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		tb.Fatalf("%s needs %d descriptors, RLIMIT_NOFILE is %d (hard %d) and cannot be raised here: %v; "+
			"with %d per tunnel, about %d tunnels fit (set IFSOCKS_SOAK_TUNNELS), or run where the limit can be raised (CAP_SYS_RESOURCE)",
			what, need, old.Cur, old.Max, err, perTunnel, (old.Max-soakFDSlack)/perTunnel)
	}
}

// soakFDSlack is the descriptors a process needs besides the tunnels'
// sockets: listeners, epoll, netlink, logs, handshakes in flight, a
// flow's sockets still closing while its successor opens.
const soakFDSlack = 100

// scrapeTry is scrape without failing the test (used from goroutines).
func scrapeTry(ns, addr string) (promMetrics, error) {
	code, body, err := nsHTTP(ns, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("GET /metrics: status %d", code)
	}
	return parseProm(body)
}
