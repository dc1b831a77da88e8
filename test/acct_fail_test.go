//go:build linux

package test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size at a new directory, unmounted at the
// end of the test.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// startFails runs the daemon with cfg in topo's P and expects it to refuse
// to start; it returns what it printed.
func startFails(t *testing.T, topo *topology, cfg string) string {
	t.Helper()
	_, shared := getDaemon(t)
	path := filepath.Join(t.TempDir(), "ifsocks.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", topo.P, shared.bin, "-config", path)
	cmd.Env = nstest.CleanEnv
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("daemon with a bad accounting database: %v, want exit status 1; output:\n%s", err, out)
	}
	if strings.Contains(string(out), "panic") {
		t.Errorf("daemon panicked:\n%s", out)
	}
	return string(out)
}

// TestAccountingBadDatabase: a database that is not SQLite, or sits in a
// read-only directory, stops the daemon at start with a message naming the
// file and what to do; with on_error = "serve" it serves without
// accounting and says so.
func TestAccountingBadDatabase(t *testing.T) {
	topo := newEgressTopologyAs(t, acctPrefix)
	startAcctUpstream(t, topo, 1)

	corrupt := filepath.Join(t.TempDir(), "usage.db")
	if err := os.WriteFile(corrupt, []byte(strings.Repeat("this is no database\n", 300)), 0o600); err != nil {
		t.Fatal(err)
	}
	ro := mountTmpfs(t, "1m")
	roDB := filepath.Join(ro, "usage.db")
	if out, err := exec.Command("sqlite3", roDB, "CREATE TABLE unrelated (x); INSERT INTO unrelated VALUES (1)").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	for _, tc := range []struct{ name, path, why string }{
		{"corrupt file", corrupt, "not a database"},
		{"read-only directory", roDB, "readonly"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := startFails(t, topo, acctConfig(tc.path, 1, "1s", "", nil))
			for _, want := range []string{tc.path, tc.why, `on_error = "serve"`} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			od := startAcctDaemon(t, topo, acctConfig(tc.path, 1, "1s", "on_error = \"serve\"", nil))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := acctTCP(ctx, topo.C, acctUser(0), acctTCPBase, 100, 100_000); err != nil {
				t.Errorf("flow without accounting: %v", err)
			}
			line := od.lastMsg("serving WITHOUT accounting or quotas: the database cannot be opened and accounting.on_error is serve")
			if line == nil || !strings.Contains(line["error"].(string), tc.path) {
				t.Errorf("no warning naming %s: %v", tc.path, line)
			}
			od.stopTerm(t)
		})
	}
	if data, err := os.ReadFile(corrupt); err != nil || !strings.HasPrefix(string(data), "this is no database") {
		t.Errorf("the corrupt file was changed (%v)", err)
	}
}

// TestAccountingDiskFull: when the disk under the database fills, flows go
// on, the daemon warns and keeps the counts in memory, and once there is
// room again they are written: the totals are exact.
func TestAccountingDiskFull(t *testing.T) {
	topo := newEgressTopologyAs(t, acctPrefix)
	up := startAcctUpstream(t, topo, acctUsers)
	dir := mountTmpfs(t, "512k")
	db := filepath.Join(dir, "usage.db")
	cfg := acctConfig(db, acctUsers, "200ms", "", nil)
	od := startAcctDaemon(t, topo, cfg)
	// Let the first flushes create the log file's pages, then fill the
	// disk to the last byte.
	time.Sleep(time.Second)
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	mark := od.mark()
	acctTraffic(t, topo, 1) // fails the test unless every flow works
	od.waitLineSince(t, mark, "cannot write the accounting database; serving on, counts kept in memory and retried at each flush")
	acctTraffic(t, topo, 2)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	od.waitLineSince(t, mark, "accounting database writable again; counts kept in memory are written")
	od.stopTerm(t)
	wantTotals(t, db, up, 8)
}
