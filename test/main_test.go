//go:build linux

package test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// reaperEnv marks the helper process started by TestMain that removes our
// namespaces if this test process dies without running its defers (a panic
// in a test goroutine, `go test -timeout`, SIGKILL).
const reaperEnv = "IFST_REAPER_FOR_PID"

// env is the per-process test environment: topology plus upstream servers.
type env struct {
	topo *topology
	web  *whoami
	dns  *dnsServer
	udp  *udpServers
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

func TestMain(m *testing.M) {
	if pid := os.Getenv(reaperEnv); pid != "" {
		os.Exit(reaperMain(pid))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		if err := nstest.RemoveStale(nsPrefix); err != nil {
			fmt.Fprintf(os.Stderr, "warning: removing stale namespaces: %v\n", err)
		}
		stop := startReaper()
		defer stop()
	}
	defer nstest.RemoveBinaries()
	defer teardownEnv()
	code := m.Run()
	// Last line of defence for "no password ever logged": covers log lines
	// written after the test that checks it.
	if leaks := passwordLeaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: daemon log contains passwords:\n%s\n", strings.Join(leaks, "\n"))
		code = 1
	}
	logs := daemonLogs()
	// The contract says SIGTERM stops the daemon; needing SIGKILL fails.
	if err := stopDaemon(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		code = 1
	}
	if code != 0 && logs != "" {
		fmt.Fprintf(os.Stderr, "--- daemon log (last %d lines) ---\n%s\n", logTail, tail(logs, logTail))
	}
	return code
}

const logTail = 100

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// getEnv builds the topology and upstream servers once per test process.
func getEnv(tb testing.TB) *env {
	tb.Helper()
	nstest.RequireRoot(tb)
	envOnce.Do(func() { theEnv, envErr = setupEnv() })
	if envErr != nil {
		tb.Fatalf("test environment: %v", envErr)
	}
	return theEnv
}

func setupEnv() (*env, error) {
	topo, err := newTopology()
	if err != nil {
		return nil, err
	}
	e := &env{topo: topo}
	if e.web, err = startWhoami(topo.U); err == nil {
		e.dns, err = startDNS(topo.U)
	}
	if err == nil {
		e.udp, err = startUDPServers(topo.U)
	}
	if err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.web != nil {
		e.web.close()
	}
	if e.dns != nil {
		e.dns.close()
	}
	if e.udp != nil {
		e.udp.close()
	}
	if err := e.topo.destroy(); err != nil {
		fmt.Fprintf(os.Stderr, "warning: topology teardown: %v\n", err)
	}
}

func teardownEnv() {
	_ = stopDaemon() // before the namespaces go away (no-op if stopped)
	if theEnv != nil {
		theEnv.close()
	}
}

// startReaper starts a copy of this binary that waits for EOF on a pipe
// whose only writer is us; EOF means we exited, however we exited. It
// returns the function that ends the reaper after a normal teardown.
func startReaper() func() {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: no reaper: %v\n", err)
		return func() {}
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: no reaper: %v\n", err)
		return func() {}
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), reaperEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.Stdin = r
	// No stdout/stderr: `go test` waits until every writer of the test
	// binary's output closes it, and the reaper must not delay that.
	// Own process group: a Ctrl-C for the test must not kill the reaper.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "warning: no reaper: %v\n", err)
		r.Close()
		w.Close()
		return func() {}
	}
	r.Close()
	return func() {
		w.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	}
}

// reaperMain runs in the reaper process: wait for the parent's death, then
// delete the parent's namespaces and /etc/netns directories.
func reaperMain(pidStr string) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return 2
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := nstest.RemoveOwned(nsPrefix, pid); err != nil {
		return 1
	}
	return 0
}
