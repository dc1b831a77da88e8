//go:build linux

package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

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

type daemon struct {
	dir  string
	bin  string // the ifsocks binary, also used by the ops tests' own instances
	cmd  *exec.Cmd
	logs *nstest.LogBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait result, valid after done
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
	dir, err := os.MkdirTemp("", "ifst-daemon-")
	if err != nil {
		return nil, err
	}
	d := &daemon{dir: dir, logs: &nstest.LogBuffer{}, done: make(chan struct{})}
	bin, err := nstest.BinaryErr() // or $IFSOCKS_BIN, prebuilt
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d.bin = bin
	cfg := filepath.Join(dir, "ifsocks.toml")
	if err := writeConfig(cfg); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// `ip netns exec` bind-mounts /etc/netns/P/resolv.conf and then execs the
	// daemon (no fork), so the pid we hold is the daemon's.
	d.cmd = exec.Command("ip", "netns", "exec", topo.P, bin, "-config", cfg)
	d.cmd.Env = nstest.CleanEnv
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	// If this test process dies, the kernel kills the daemon too.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	if err := d.waitReady(topo.C, 10*time.Second); err != nil {
		_ = d.stop()
		return nil, fmt.Errorf("%w\ndaemon log:\n%s", err, d.logs.String())
	}
	return d, nil
}

func writeConfig(path string) error {
	// MinCost keeps bcrypt cheap; the daemon must accept any valid cost.
	hash, err := bcrypt.GenerateFromPassword([]byte(alicePass), bcrypt.MinCost)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`[server]
listen = ["10.231.0.1:1080", "[fd31:0::1]:1080"]
handshake_timeout = "10s"
idle_timeout = "5m"
connect_timeout = "5s"
# The suite's clients fail logins on purpose, from one address.
auth_fail_limit = 0

[log]
level = "debug"
format = "json"

[[users]]
name = "alice"
password_hash = %q
interface = "wan1"

[[users]]
name = "bob"
password = %q
interface = "wan2"

[[users]]
name = "carol"
password = %q
interface = "nosuch0"
`, hash, bobPass, carolPass)
	return os.WriteFile(path, []byte(cfg), 0o600)
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
				return fmt.Errorf("daemon exited before listening on %s: %v", addr, d.err)
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("daemon not accepting on %s after %v: %v", addr, limit, err)
			}
		}
	}
	return nil
}

// stop sends SIGTERM and escalates to SIGKILL after 5 s, which it reports
// as an error.
func (d *daemon) stop() error {
	var err error
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		err = fmt.Errorf("daemon still running 5s after SIGTERM; killed it")
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	os.RemoveAll(d.dir)
	return err
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
