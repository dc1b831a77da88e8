package nstest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BinaryEnv names a prebuilt ifsocks binary to use instead of building one.
const BinaryEnv = "IFSOCKS_BIN"

// builds holds the binaries of this process: [0] plain, [1] with -race.
var builds [2]struct {
	once sync.Once
	path string
	err  error
}

// Binary is the path of an ifsocks binary built from this module once per
// test process (or $IFSOCKS_BIN). Builds of processes that are gone are
// removed on the way.
func Binary(tb testing.TB) string {
	tb.Helper()
	p, err := BinaryErr()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BinaryErr is Binary returning the error.
func BinaryErr() (string, error) { return binary(false) }

// RaceBinary is Binary built with -race (never $IFSOCKS_BIN): a data race
// in the daemon then ends it with a report in its log. It is checked to
// be instrumented.
func RaceBinary(tb testing.TB) string {
	tb.Helper()
	p, err := binary(true)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func binary(race bool) (string, error) {
	i := 0
	if race {
		i = 1
	}
	b := &builds[i]
	b.once.Do(func() { b.path, b.err = build(race) })
	return b.path, b.err
}

const binDirPrefix = "ifsocks-nstest-"

// RemoveBinaries removes this process's builds; for TestMain, after the
// tests. (Builds of dead processes are removed by the next build anyway.)
func RemoveBinaries() {
	os.RemoveAll(filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", binDirPrefix, os.Getpid())))
}

// Main runs a package's tests and then removes the daemon builds they made:
// the TestMain of a package that starts the daemon is
// os.Exit(nstest.Main(m)), or its last test's builds (tens of MB) stay in
// the temporary directory until some later test run builds again.
func Main(m *testing.M) int {
	defer RemoveBinaries()
	return m.Run()
}

func build(race bool) (string, error) {
	if bin := os.Getenv(BinaryEnv); bin != "" && !race {
		if f, err := os.Open(bin); err == nil { // tracked by the test cache
			f.Close()
		}
		return bin, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	removeStaleBuilds()
	if err := openSources(root); err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", binDirPrefix, os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
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
	cmd := exec.CommandContext(ctx, goBin, append(args, "-o", bin, ".")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s in %s: %w\n%s", strings.Join(args, " "), root, err, out)
	}
	// A race requirement rests on the binary really being instrumented.
	out, err := exec.CommandContext(ctx, goBin, "version", "-m", bin).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go version -m %s: %w\n%s", bin, err, out)
	}
	if got := strings.Contains(string(out), "-race=true"); got != race {
		return "", fmt.Errorf("%s: built with -race=%v, want %v", bin, got, race)
	}
	return bin, nil
}

// removeStaleBuilds removes the build directories of dead test processes.
func removeStaleBuilds() {
	entries, _ := os.ReadDir(os.TempDir())
	for _, e := range entries {
		pid, ok := OwnerPid(strings.TrimSuffix(binDirPrefix, "-"), e.Name())
		if ok && pid != os.Getpid() && !PidAlive(pid) {
			os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// ModuleRoot is the directory of this module's go.mod, found upwards from
// the working directory (a package's directory under go test).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// openSources opens every file the daemon's build reads: go test caches a
// pass only while the files a test opened are unchanged, so without this
// a cached pass would survive an edit of the daemon.
func openSources(root string) error {
	return filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			if path != root && (strings.HasPrefix(de.Name(), ".") || de.Name() == "test" || de.Name() == "bench" || de.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if n := de.Name(); strings.HasSuffix(n, ".go") || n == "go.mod" || n == "go.sum" {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			f.Close()
		}
		return nil
	})
}

// Daemon is an ifsocks process a test started in a namespace, with its
// configuration file and its output.
type Daemon struct {
	NS         *NS
	ConfigPath string
	Cmd        *exec.Cmd
	// Logs is the daemon's stdout and stderr (its zap log).
	Logs *LogBuffer

	done chan struct{}
	err  error // the process's exit, once done is closed

	mu      sync.Mutex
	secrets []string // plaintext passwords of every configuration written
	ownDir  string   // the configuration's directory, made for it; Stop removes it
}

// passwordLine finds the plaintext passwords of a configuration, which no
// log line may contain.
var passwordLine = regexp.MustCompile(`(?m)^\s*password\s*=\s*("(?:[^"\\]|\\.)*")`)

// ErrKilled is returned by Stop when SIGTERM did not end the process in
// StopTimeout and it was killed.
var ErrKilled = errors.New("did not exit after SIGTERM; killed")

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 15 * time.Second

// StartDaemon starts the ifsocks binary in ns with the configuration
// text cfg, env added to its environment. At the end of the test it is
// stopped with SIGTERM, which must suffice (and end with status 0), and
// its log must not contain the plaintext password of any configuration it
// was given (hashed users: check Leaks with Config.Passwords); the log's
// tail is shown when the test failed.
func StartDaemon(tb testing.TB, ns *NS, cfg string, env ...string) *Daemon {
	tb.Helper()
	d, err := LaunchDaemon(Binary(tb), ns, cfg, env...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := d.Stop(); err != nil {
			tb.Errorf("daemon: %v", err)
		}
		d.mu.Lock()
		secrets := d.secrets
		d.mu.Unlock()
		if leaks := d.Leaks(secrets); len(leaks) > 0 {
			tb.Errorf("daemon log contains passwords:\n%s", strings.Join(leaks, "\n"))
		}
		if tb.Failed() {
			tb.Logf("daemon log (last 60 lines):\n%s", Tail(d.Logs.String(), 60))
		}
	})
	return d
}

// LaunchDaemon starts bin in ns with configuration text cfg, written to
// a directory of its own that Stop removes; for setup outside a test. The
// caller calls Stop.
func LaunchDaemon(bin string, ns *NS, cfg string, env ...string) (*Daemon, error) {
	dir, err := os.MkdirTemp("", "ifsocks-daemon-")
	if err != nil {
		return nil, err
	}
	d := &Daemon{ConfigPath: filepath.Join(dir, "ifsocks.toml")}
	if err := d.WriteConfigErr(cfg); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := ns.Command(context.Background(), bin, "-config", d.ConfigPath)
	cmd.Env = append(cmd.Env, env...)
	nd, err := StartCommand(cmd, d.ConfigPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	nd.NS, nd.ownDir, nd.secrets = ns, dir, d.secrets
	return nd, nil
}

// StartCommand starts cmd, which runs the daemon with configPath (a
// wrapper such as setpriv may come first, as long as it ends by exec'ing
// the daemon), with its output going to Logs. The caller calls Stop.
func StartCommand(cmd *exec.Cmd, configPath string) (*Daemon, error) {
	d := &Daemon{ConfigPath: configPath, Cmd: cmd, Logs: &LogBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.Logs, d.Logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	return d, nil
}

// WriteConfig replaces the configuration file atomically (a rename), so a
// reload never reads half a file.
func (d *Daemon) WriteConfig(tb testing.TB, text string) {
	tb.Helper()
	if err := d.WriteConfigErr(text); err != nil {
		tb.Fatal(err)
	}
}

// WriteConfigErr is WriteConfig returning the error.
func (d *Daemon) WriteConfigErr(text string) error {
	d.mu.Lock()
	for _, m := range passwordLine.FindAllStringSubmatch(text, -1) {
		if p, err := strconv.Unquote(m[1]); err == nil {
			d.secrets = append(d.secrets, p)
		}
	}
	d.mu.Unlock()
	tmp := d.ConfigPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.ConfigPath)
}

// Pid is the daemon's process ID (`ip netns exec` execs it).
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Done is closed when the process has exited; Err is then its exit.
func (d *Daemon) Done() <-chan struct{} { return d.done }
func (d *Daemon) Err() error            { return d.err }

// Running reports whether the process is still alive.
func (d *Daemon) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// Signal sends sig (SIGHUP: reload).
func (d *Daemon) Signal(sig syscall.Signal) error { return d.Cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits StopTimeout for the exit; needing SIGKILL,
// or an exit status other than 0, is an error. Stopping a stopped daemon
// reports its exit again.
func (d *Daemon) Stop() error {
	if d.ownDir != "" {
		defer os.RemoveAll(d.ownDir)
	}
	if !d.Running() {
		return d.exitErr()
	}
	_ = d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.exitErr()
	case <-time.After(StopTimeout):
		_ = d.Cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%w (waited %v)", ErrKilled, StopTimeout)
	}
}

func (d *Daemon) exitErr() error {
	if d.err != nil {
		return fmt.Errorf("exited with %v", d.err)
	}
	return nil
}

// WaitListening dials every address from namespace from until it accepts,
// at most limit in all; it gives up at once if the daemon exits.
func (d *Daemon) WaitListening(from *NS, limit time.Duration, addrs ...string) error {
	deadline := time.Now().Add(limit)
	for _, addr := range addrs {
		for {
			c, err := from.Dialer(time.Second).Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.done:
				return fmt.Errorf("daemon exited (%v) before listening on %s; log:\n%s", d.err, addr, Tail(d.Logs.String(), 40))
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("daemon not accepting on %s after %v: %v; log:\n%s", addr, limit, err, Tail(d.Logs.String(), 40))
			}
		}
	}
	return nil
}

// MustListen is WaitListening (10 s) failing the test.
func (d *Daemon) MustListen(tb testing.TB, from *NS, addrs ...string) {
	tb.Helper()
	if err := d.WaitListening(from, 10*time.Second, addrs...); err != nil {
		tb.Fatal(err)
	}
}

// Leaks lists the log lines that contain any of the secrets.
func (d *Daemon) Leaks(secrets []string) []string {
	var leaks []string
	for _, line := range strings.Split(d.Logs.String(), "\n") {
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				leaks = append(leaks, line)
				break
			}
		}
	}
	return leaks
}
