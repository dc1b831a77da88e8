//go:build linux

package soak

import (
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
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The soak tests' rig: a C/P/U topology of their own (names "ifss-<pid>-<n>-",
// so they never meet the package's "ifst-" namespaces), a daemon built with
// -race when asked, its log scanned line by line into a file instead of
// memory (a long run writes hundreds of thousands of flow lines), and the
// daemon's descriptors, goroutines and RSS.

const (
	soakPrefix = "ifss-"
	// The daemon's reload lines.
	msgReloaded     = "configuration reloaded"
	msgReloadFailed = "reload failed; the running configuration is unchanged"
	soakReaperEnv   = "IFSS_REAPER_FOR_PID"
	soakListen      = "10.231.0.1:1080" // P's address facing C (nstest.Topology, Net 231)
	svcV4           = "10.231.9.9"      // U's service address
	soakMetrics     = "127.0.0.1:9810"
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
				errs = append(errs, nstest.DeleteNamed(e.Name()))
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
				if err != nil || pid <= 0 || pid == os.Getpid() || nstest.PidAlive(pid) || seen[pid] {
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

// topology names the namespaces of a soak run.
type topology struct{ C, P, U string }

// newSoakTopology builds a C/P/U triple like the package's (wan1 and wan2
// in P, strict rp_filter in U) under soak names, removed at the end of
// the test. Ports: C and P get a wide ephemeral range and tcp_tw_reuse,
// since a long run opens hundreds of thousands of connections.
func newSoakTopology(t *testing.T) *topology {
	t.Helper()
	soakHousekeeping(t)
	nt := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: strings.TrimSuffix(soakPrefix, "-"), Net: 231, V6: "fd31"})
	topo := &topology{C: nt.C.Name, P: nt.P.Name, U: nt.U.Name}
	for _, ns := range []string{topo.C, topo.P} {
		if err := nstest.Sysctl(ns, "net.ipv4.ip_local_port_range=10000 65535", "net.ipv4.tcp_tw_reuse=1",
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
		_, err := nstest.IPErr("-n", topo.P, "link", "set", "wan2", "down")
		return err
	}
	for _, s := range [][]string{
		{"-n", topo.P, "link", "set", "wan2", "up"},
		{"-n", topo.P, "addr", "replace", "10.231.2.1/24", "dev", "wan2"},
		{"-n", topo.P, "-6", "addr", "replace", "fd31:2::1/64", "dev", "wan2", "nodad"},
		{"-n", topo.P, "route", "replace", "default", "via", "10.231.2.2", "dev", "wan2", "metric", "200"},
		{"-n", topo.P, "-6", "route", "replace", "default", "via", "fd31:2::2", "dev", "wan2", "metric", "200"},
	} {
		if _, err := nstest.IPErr(s...); err != nil {
			return err
		}
	}
	return nil
}

// ---------------------------------------------------------------------
// The daemon binary.

// soakBinary is the daemon built once per process and flavour (-race or
// not); nstest checks a race build is instrumented.
func soakBinary(t *testing.T, race bool) string {
	t.Helper()
	if race {
		return nstest.RaceBinary(t)
	}
	return nstest.Binary(t)
}

// ---------------------------------------------------------------------
// Configuration.

// Users of the soak daemon; passwords are unique so the log
// can be searched for them.
var (
	soakAlice = nstest.User{Name: "alice", Password: "soak-alice-Pw-6c1d42", Interface: "wan1", Hashed: true}
	soakBob   = nstest.User{Name: "bob", Password: "soak-bob-Pw-93ae07", Interface: "wan2"}
	soakCarol = nstest.User{Name: "carol", Password: "soak-carol-Pw-0b7f5e", Interface: "wan1"}
	// bob's password in the broken files: if any of them were applied,
	// every new tunnel of bob would be refused.
	soakBobBroken = nstest.User{Name: "bob", Password: "soak-bob-Broken-Pw-51c9", Interface: "wan2"}
)

var soakPasswords = []string{soakAlice.Password, soakBob.Password, soakCarol.Password, soakBobBroken.Password}

// soakConfig is the text of a soak daemon's configuration: serverExtra
// goes into [server]; users are written in order.
func soakConfig(tb testing.TB, handshake string, serverExtra string, users ...nstest.User) string {
	tb.Helper()
	// All the load comes from one client address, like a busy office
	// behind NAT, and the reload test's probes fail logins on purpose:
	// the per-IP abuse limits are off, so they measure nothing here.
	server := []string{fmt.Sprintf("handshake_timeout = %q", handshake), `shutdown_timeout = "5s"`,
		"max_handshakes_per_ip = 0", "auth_fail_limit = 0"}
	if serverExtra != "" {
		server = append(server, serverExtra)
	}
	return nstest.Config{Listen: []string{soakListen}, Server: server, Metrics: soakMetrics, LogLevel: "info", Users: users}.Render(tb)
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
