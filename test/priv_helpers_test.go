//go:build linux

package test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Helpers of the privilege and descriptor-exhaustion tests (priv_test.go,
// emfile_test.go). Each test gets a C/P/U topology of its own, named
// ifsp-<pid>-<n><role>, with whoami in U, and starts the daemon through a
// wrapper command (setpriv, prlimit, a cgroup move) that ends in an exec
// of the daemon, so the pid we hold is the daemon's and /proc tells its
// credentials, limits and CPU time.

const privPrefix = "ifsp-"

// nobody is the unprivileged uid and gid the daemon runs as; it needs no
// entry in /etc/passwd.
const nobody = 65534

// privSeq numbers the cgroups of one test process.
var privSeq atomic.Int32

// newPrivTopology builds a topology for one test and starts whoami in its
// U; both go away at the end of the test.
func newPrivTopology(t *testing.T) *topology {
	t.Helper()
	nstest.RequireRoot(t)
	privRemoveStale(t)
	nt := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: strings.TrimSuffix(privPrefix, "-"), Net: 231, V6: "fd31"})
	topo := &topology{C: nt.C.Name, P: nt.P.Name, U: nt.U.Name}
	wh, err := startWhoami(topo.U)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wh.close)
	return topo
}

// privOwner extracts the pid from "ifsp-<pid>-...".
func privOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, privPrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

// privRemoveStale deletes what a killed earlier run of these tests left:
// namespaces, /etc/netns directories, temporary directories and cgroups
// whose owner is dead. (TestMain's reaper only knows the ifst- names.)
func privRemoveStale(t *testing.T) {
	t.Helper()
	dirs := []string{"/run/netns", "/etc/netns", os.TempDir()}
	if mnt, err := cgroup2Mount(); err == nil {
		dirs = append(dirs, mnt)
	}
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			pid, ok := privOwner(e.Name())
			if !ok || pid == os.Getpid() || nstest.PidAlive(pid) {
				continue
			}
			var err error
			switch dir {
			case "/run/netns":
				err = nstest.DeleteNamed(e.Name())
			case "/etc/netns", os.TempDir():
				err = os.RemoveAll(filepath.Join(dir, e.Name()))
			default:
				err = unix.Rmdir(filepath.Join(dir, e.Name()))
			}
			if err != nil {
				t.Logf("removing stale %s/%s: %v", dir, e.Name(), err)
			}
		}
	}
}

// privDir makes a directory that uid nobody can enter, removed at the end
// of the test. (t.TempDir's parent is mode 0700.)
func privDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", privPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// privBinary puts a copy of the daemon binary (nstest.Binary) into dir,
// executable by anyone.
func privBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "ifsocks")
	if err := copyFile(nstest.Binary(t), bin); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// privConfig renders a configuration with one listen address and two
// users: alice (bcrypt) on wan1, dave (plaintext) on wan2.
func privConfig(t *testing.T, listen, handshake string) string {
	t.Helper()
	return nstest.Config{
		Listen: []string{listen},
		Server: []string{fmt.Sprintf("handshake_timeout = %q", handshake)},
		Users:  []nstest.User{opsAlice, opsDave},
	}.Render(t)
}

// writePrivConfig writes the configuration into dir, readable only by
// uid nobody (the file holds a plaintext password).
func writePrivConfig(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, "ifsocks.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return path
}

// startWrapped starts argv, which must end by exec'ing the daemon, and
// stops it (SIGTERM) at the end of the test. It does not wait for the
// listeners.
func startWrapped(t *testing.T, topo *topology, bin, cfgPath string, argv []string) *opsDaemon {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = nstest.CleanEnv
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	nd, err := nstest.StartCommand(cmd, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	od := &opsDaemon{daemon: wrapDaemon(nd, bin), cfgPath: cfgPath, topo: topo}
	t.Cleanup(func() {
		if err := od.stop(); err != nil {
			t.Errorf("daemon: %v", err)
		}
		if leaks := od.passwordLeaks(); len(leaks) > 0 {
			t.Errorf("daemon log contains passwords:\n%s", strings.Join(leaks, "\n"))
		}
		if t.Failed() {
			t.Logf("daemon log (last %d lines):\n%s", logTail, tail(od.logs.String(), logTail))
		}
	})
	return od
}

// stopClean checks that the daemon is still running, stops it with
// SIGTERM and checks that it exited with status 0 within the grace period.
// The cleanup's stop is then a no-op.
func (od *opsDaemon) stopClean(t *testing.T) {
	t.Helper()
	if !od.running() {
		t.Fatalf("daemon exited on its own: %v", od.exitErr())
	}
	if err := od.stop(); err != nil {
		t.Error(err)
	} else if od.exitErr() != nil {
		t.Errorf("daemon exited with %v after SIGTERM, want status 0", od.exitErr())
	}
}

// waitDaemonExec waits (bounded) until the wrapper chain has exec'd the
// daemon binary: only then do /proc's credentials and limits belong to it.
func (od *opsDaemon) waitDaemonExec(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", od.pid()))
		if err == nil && exe == od.bin {
			return
		}
		if !od.running() {
			t.Fatalf("daemon exited before exec'ing %s: %v; log:\n%s", od.bin, od.exitErr(), od.logs.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is %q after 10s, want %s", od.pid(), exe, od.bin)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procStatus returns the named fields of /proc/PID/status.
func procStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 for user space on every architecture.
const userHZ = 100

// cpuTime returns the user plus system CPU time the process has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: split
	// after its last ')'. Field 3 (state) is then the first.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// openFDs counts the process's open descriptors.
func openFDs(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries), err
}

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(t *testing.T, major, minor int) (bool, string) {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var maj, mnr int
	if _, err := fmt.Sscanf(rel, "%d.%d", &maj, &mnr); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	return maj > major || (maj == major && mnr >= minor), rel
}
