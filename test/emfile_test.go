//go:build linux

package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Descriptor exhaustion: with a low RLIMIT_NOFILE and clients holding
// every descriptor, accept(2) fails with EMFILE while the connection stays
// queued, so a loop that retried at once would spin on one core. The
// daemon must back off (growing waits, up to a second), stay alive, and
// serve again as soon as descriptors are free.

const (
	emfileLimit   = 64 // RLIMIT_NOFILE of the daemon, soft and hard
	msgAcceptFail = "accept failed; retrying"
)

func TestAcceptEMFILE(t *testing.T) {
	topo := newPrivTopology(t)
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Fatalf("prlimit: %v (util-linux prlimit is a test dependency)", err)
	}
	dir := privDir(t)
	bin := privBinary(t, dir)
	proxy := net.JoinHostPort(proxyV4, "1080")
	// Clients that never send a byte keep their descriptor for the whole
	// handshake timeout: far longer than the test's exhaustion phase.
	// Without a server-wide handshake cap: by default (a quarter of the
	// descriptor limit) the daemon would evict silent clients instead of
	// running out of descriptors, which is not what this test is about.
	text := strings.Replace(privConfig(t, proxy, "2m"), "[server]\n", "[server]\nmax_handshakes = 0\n", 1)
	cfg := writePrivConfig(t, dir, text)
	nofile := fmt.Sprintf("--nofile=%d:%d", emfileLimit, emfileLimit)
	od := startWrapped(t, topo, bin, cfg, []string{"ip", "netns", "exec", topo.P, "prlimit", nofile, "--", bin, "-config", cfg})
	od.waitDaemonExec(t)
	if err := od.waitListening([]string{proxy}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := od.pid()
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != emfileLimit || lim.Max != emfileLimit {
		t.Fatalf("daemon RLIMIT_NOFILE %d:%d, want %d:%d", lim.Cur, lim.Max, emfileLimit, emfileLimit)
	}
	// One flow before exhaustion: the proxy works with this limit.
	if got := whoamiVia(t, topo.C, proxy, opsAlice, net.JoinHostPort(svcV4, "8080")); got != wan1V4 {
		t.Fatalf("alice before exhaustion: upstream saw %s, want %s", got, wan1V4)
	}
	baseline := mustFDs(t, pid)
	t.Logf("daemon: %d descriptors open at rest, limit %d", baseline, emfileLimit)

	// Exhaust: the kernel completes every handshake into the accept
	// queue, the daemon accepts until it has no descriptor left, and the
	// rest stay queued, each one an EMFILE at every accept.
	mark := od.mark()
	var clients []net.Conn
	closeClients := func() {
		for _, c := range clients {
			c.Close()
		}
		clients = nil
	}
	t.Cleanup(closeClients)
	for range emfileLimit {
		c, err := nstest.Dialer{NS: topo.C, Timeout: 5 * time.Second}.Dial("tcp", proxy)
		if err != nil {
			t.Fatalf("client %d: %v", len(clients)+1, err)
		}
		clients = append(clients, c)
	}
	first := od.waitLineSince(t, mark, msgAcceptFail)
	if e, _ := first["error"].(string); !strings.Contains(e, unix.EMFILE.Error()) {
		t.Errorf("first %q line: error %q, want it to contain %q", msgAcceptFail, e, unix.EMFILE.Error())
	}
	if first["listener"] != proxy {
		t.Errorf("first %q line: listener %v, want %s", msgAcceptFail, first["listener"], proxy)
	}
	// The limit caps descriptor numbers, not their count (a descriptor
	// inherited from our caller may sit above it): EMFILE means every
	// number below the limit is taken.
	if n := fdsBelow(t, pid, emfileLimit); n != emfileLimit {
		t.Errorf("daemon has %d of descriptors 0..%d open while accept fails, want all", n, emfileLimit-1)
	}

	// (a) While exhausted: few retries, little CPU.
	time.Sleep(300 * time.Millisecond)
	const window = 2 * time.Second
	cpu0, lines0 := mustCPU(t, pid), od.countMsg(msgAcceptFail)
	time.Sleep(window)
	cpu1, lines1 := mustCPU(t, pid), od.countMsg(msgAcceptFail)
	if !od.running() {
		t.Fatalf("daemon exited while out of descriptors: %v", od.exitErr())
	}
	used, retries := cpu1-cpu0, lines1-lines0
	t.Logf("exhausted for %v: daemon used %v CPU, logged %d retries", window, used, retries)
	// A loop retrying at once burns the whole window on one core and
	// logs thousands of lines; backing off uses next to nothing.
	if used > window/10 {
		t.Errorf("daemon used %v CPU in %v while out of descriptors, want <= %v: is the accept loop spinning?", used, window, window/10)
	}
	if retries < 1 || retries > 20 {
		t.Errorf("%d %q lines in %v, want 1..20 (backoff up to 1s)", retries, msgAcceptFail, window)
	}
	backoffs := acceptBackoffs(t, od, mark)
	t.Logf("%d backoffs so far, the first up to 12: %v", len(backoffs), backoffs[:min(12, len(backoffs))])
	wantGrowingBackoff(t, backoffs)

	// (b) Service resumes once the clients go.
	closed := time.Now()
	closeClients()
	got := whoamiVia(t, topo.C, proxy, opsAlice, net.JoinHostPort(svcV4, "8080"))
	recovery := time.Since(closed)
	t.Logf("a fresh CONNECT completed %v after the clients closed", recovery)
	if got != wan1V4 {
		t.Errorf("alice after exhaustion: upstream saw %s, want %s", got, wan1V4)
	}
	// The backoff is at most 1s; the queued, already closed connections
	// are accepted and dropped within milliseconds.
	if recovery > 5*time.Second {
		t.Errorf("service resumed %v after the clients closed, want <= 5s", recovery)
	}
	settled := od.countMsg(msgAcceptFail)
	if got := whoamiVia(t, topo.C, proxy, opsDave, net.JoinHostPort(svcV4, "8080")); got != wan2V4 {
		t.Errorf("dave after exhaustion: upstream saw %s, want %s", got, wan2V4)
	}
	if n := od.countMsg(msgAcceptFail) - settled; n != 0 {
		t.Errorf("%d more %q lines after recovery, want none", n, msgAcceptFail)
	}
	// The daemon's descriptors drain back to its resting count.
	deadline := time.Now().Add(5 * time.Second)
	for n := mustFDs(t, pid); n > baseline; n = mustFDs(t, pid) {
		if time.Now().After(deadline) {
			t.Errorf("daemon holds %d descriptors 5s after recovery, %d at rest before", n, baseline)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	// (c) The same process all along, and SIGTERM stops it cleanly.
	od.stopClean(t)
}

func mustFDs(t *testing.T, pid int) int {
	t.Helper()
	n, err := openFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fdsBelow counts the process's open descriptors numbered below limit.
func fdsBelow(t *testing.T, pid, limit int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd < limit {
			n++
		}
	}
	return n
}

func mustCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	d, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// acceptBackoffs returns the backoff of every accept failure since mark.
func acceptBackoffs(t *testing.T, od *opsDaemon, mark int) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, m := range od.entriesSince(mark) {
		if m["msg"] != msgAcceptFail {
			continue
		}
		s, _ := m["backoff"].(string)
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%q line: backoff %v: %v", msgAcceptFail, m["backoff"], err)
		}
		if m["level"] != "warn" {
			t.Errorf("%q line at level %v, want warn", msgAcceptFail, m["level"])
		}
		out = append(out, d)
	}
	return out
}

// wantGrowingBackoff checks the shape of net/http's accept backoff: a
// short first wait, then doubling until a cap of one second.
func wantGrowingBackoff(t *testing.T, b []time.Duration) {
	t.Helper()
	if len(b) < 5 {
		t.Fatalf("%d accept retries, want at least 5 after 2.3s of exhaustion", len(b))
	}
	if b[0] > 10*time.Millisecond {
		t.Errorf("first backoff %v, want <= 10ms", b[0])
	}
	for i := 1; i < len(b); i++ {
		if want := min(2*b[i-1], time.Second); b[i] != want {
			t.Errorf("backoff %d: %v after %v, want %v", i, b[i], b[i-1], want)
		}
	}
	if last := b[len(b)-1]; last < 500*time.Millisecond {
		t.Errorf("backoff still %v after %d retries, want it to have grown to >= 500ms", last, len(b))
	}
}
