//go:build linux

package test

import (
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Credentials of the package's daemon. alice uses the bcrypt form, bob and
// carol the plaintext form. wrongPass is only ever sent as a bad attempt;
// it must not show up in the log either.
const (
	alicePass = "alice-Pw-1f9e27"
	bobPass   = "bob-secret"
	carolPass = "carol-secret"
	wrongPass = "wrong-Pw-83c1aa"
)

var allPasswords = []string{alicePass, bobPass, carolPass, wrongPass}

// daemon is an ifsocks process of these tests: an nstest.Daemon under the
// names the tests use.
type daemon struct {
	nd   *nstest.Daemon
	bin  string // the ifsocks binary, also used by the ops tests' own instances
	cmd  *exec.Cmd
	logs *nstest.LogBuffer
	done <-chan struct{} // closed when the process has exited
	// killed marks a daemon a test killed on purpose: its exit is no
	// failure.
	killed bool
}

func wrapDaemon(nd *nstest.Daemon, bin string) *daemon {
	return &daemon{nd: nd, bin: bin, cmd: nd.Cmd, logs: nd.Logs, done: nd.Done()}
}

// exitErr is the process's exit (nil: status 0), once done is closed.
func (d *daemon) exitErr() error {
	if d.killed {
		return nil
	}
	return d.nd.Err()
}

var (
	daemonOnce sync.Once
	theDaemon  *daemon
	daemonErr  error
	daemonMu   sync.Mutex // guards theDaemon against stopDaemon
)

// getDaemon builds and starts the daemon once per test process. A build
// failure fails every test that needs the daemon, with the compiler output.
func getDaemon(tb testing.TB) (*env, *daemon) {
	tb.Helper()
	e := getEnv(tb)
	daemonOnce.Do(func() {
		d, err := startDaemon(e.topo)
		daemonMu.Lock()
		theDaemon, daemonErr = d, err
		daemonMu.Unlock()
	})
	if daemonErr != nil {
		tb.Fatalf("daemon: %v", daemonErr)
	}
	return e, theDaemon
}

func startDaemon(topo *topology) (*daemon, error) {
	bin, err := nstest.BinaryErr() // or $IFSOCKS_BIN, prebuilt
	if err != nil {
		return nil, err
	}
	cfg, err := mainConfig()
	if err != nil {
		return nil, err
	}
	// `ip netns exec` bind-mounts /etc/netns/P/resolv.conf and then execs the
	// daemon (no fork), so the pid we hold is the daemon's.
	nd, err := nstest.LaunchDaemon(bin, &nstest.NS{Name: topo.P}, cfg)
	if err != nil {
		return nil, err
	}
	d := wrapDaemon(nd, bin)
	if err := d.waitReady(topo.C, 10*time.Second); err != nil {
		_ = d.stop()
		return nil, fmt.Errorf("%w\ndaemon log:\n%s", err, d.logs.String())
	}
	return d, nil
}

// mainConfig is the configuration of the package's shared daemon.
func mainConfig() (string, error) {
	// alice's hash is made at the lowest cost: the daemon must accept any.
	return nstest.Config{
		Listen: []string{"10.231.0.1:1080", "[fd31:0::1]:1080"},
		Server: []string{
			`shutdown_timeout = "30s"`,
			"# The suite's clients fail logins on purpose, from one address.",
			"auth_fail_limit = 0",
		},
		Users: []nstest.User{
			{Name: "alice", Password: alicePass, Hashed: true, Egress: `interface = "wan1"`},
			{Name: "bob", Password: bobPass, Egress: `interface = "wan2"`},
			{Name: "carol", Password: carolPass, Egress: `interface = "nosuch0"`},
		},
	}.Text()
}

// waitReady polls both listeners from the client namespace, as a client
// would, and gives up early if the daemon exits.
func (d *daemon) waitReady(clientNS string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, addr := range []string{proxyListen4, proxyListen6} {
		for {
			c, err := nstest.Dialer{NS: clientNS, Timeout: time.Second}.Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.done:
				return fmt.Errorf("daemon exited before listening on %s: %v", addr, d.exitErr())
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("daemon not accepting on %s after %v: %v", addr, limit, err)
			}
		}
	}
	return nil
}

// stop sends SIGTERM and escalates to SIGKILL after nstest.StopTimeout,
// which it reports as an error (an exit status is for exitErr).
func (d *daemon) stop() error {
	if err := d.nd.Stop(); errors.Is(err, nstest.ErrKilled) {
		return err
	}
	return nil
}

func stopDaemon() error {
	daemonMu.Lock()
	defer daemonMu.Unlock()
	if theDaemon == nil {
		return nil
	}
	err := theDaemon.stop()
	theDaemon = nil
	return err
}
