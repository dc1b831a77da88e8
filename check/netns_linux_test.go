package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The namespace test runs the real binary, as an operator would, inside a
// network namespace built for it:
//
//	P (ifsk-PID-N): ck1 up, 10.89.1.1/24 + fd89:1::1/64, default routes
//	                ck2 up, 10.89.2.1/24, no default route, rp_filter=1
//	                ck3 down, 10.89.3.1/24
//	U (ifsk-PID-M): the veth peers cu1..cu3, so ck1 and ck2 have carrier
//
// The check only reads netlink and /proc, so no packet is sent at all.

// newNamespace is a namespace of this test, deleted when it ends.
func newNamespace(tb testing.TB) string { return nstest.New(tb, "ifsk", "").Name }

func TestCheckInNamespace(t *testing.T) {
	nstest.RequireRoot(t)
	bin := nstest.Binary(t)
	p, u := newNamespace(t), newNamespace(t)
	setup := [][]string{
		{"-n", p, "link", "set", "lo", "up"},
		{"link", "add", "ck1", "netns", p, "type", "veth", "peer", "name", "cu1", "netns", u},
		{"link", "add", "ck2", "netns", p, "type", "veth", "peer", "name", "cu2", "netns", u},
		{"link", "add", "ck3", "netns", p, "type", "veth", "peer", "name", "cu3", "netns", u},
		{"-n", p, "addr", "add", "10.89.1.1/24", "dev", "ck1"},
		{"-n", p, "addr", "add", "fd89:1::1/64", "dev", "ck1", "nodad"},
		{"-n", p, "addr", "add", "10.89.2.1/24", "dev", "ck2"},
		{"-n", p, "addr", "add", "10.89.3.1/24", "dev", "ck3"},
		{"-n", u, "addr", "add", "10.89.1.2/24", "dev", "cu1"},
		{"-n", u, "addr", "add", "fd89:1::2/64", "dev", "cu1", "nodad"},
		{"-n", u, "link", "set", "cu1", "up"},
		{"-n", u, "link", "set", "cu2", "up"},
		{"-n", u, "link", "set", "cu3", "up"},
		{"-n", p, "link", "set", "ck1", "up"},
		{"-n", p, "link", "set", "ck2", "up"},
		{"-n", p, "link", "set", "ck3", "down"},
		{"-n", p, "route", "add", "default", "via", "10.89.1.2", "dev", "ck1"},
		{"-n", p, "-6", "route", "add", "default", "via", "fd89:1::2", "dev", "ck1"},
		// IPv4 conf/all is inherited from the host's namespace: set
		// every value the test depends on.
		{"netns", "exec", p, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
			"net.ipv4.conf.ck1.rp_filter=0", "net.ipv4.conf.ck2.rp_filter=1", "net.ipv4.conf.ck3.rp_filter=0",
			"net.ipv4.ip_nonlocal_bind=0", "net.ipv6.ip_nonlocal_bind=0"},
	}
	for _, args := range setup {
		nstest.IP(t, args...)
	}
	// Carrier (IFF_RUNNING) follows "link set up" asynchronously.
	waitOperUp(t, p, "ck1", "ck2")
	dir := t.TempDir()
	hash := nstest.Hash(t, "pw")
	users := func(specs ...string) string {
		var b strings.Builder
		for _, s := range specs {
			name, iface, _ := strings.Cut(s, "@")
			fmt.Fprintf(&b, "\n[[users]]\nname = %q\n", name)
			if name == "bob" {
				b.WriteString("password = \"bob-pw\"\n")
			} else {
				fmt.Fprintf(&b, "password_hash = %q\n", hash)
			}
			if iface != "" {
				fmt.Fprintf(&b, "interface = %q\n", iface)
			}
		}
		return b.String()
	}

	t.Run("bad", func(t *testing.T) {
		resolvConf(t, p, "nameserver 127.0.0.53\n")
		cfg := writeFile(t, dir, "bad.toml", 0o644, `[server]
listen = ["10.89.1.1:1080", "[fd89:1::1]:1080", "127.0.0.1:1080", "192.0.2.1:1080"]
[metrics]
listen = "127.0.0.1:9810"
`+users("alice@ck1", "bob@ck2", "carol@ck3", "dave@ck9", "eve"))
		out, stderr, code := runIn(t, p, bin, "-config", cfg, "-check")
		t.Logf("output:\n%s", out)
		if code == 0 {
			t.Errorf("exit status 0, want non-zero (missing interface, foreign listen address)")
		}
		if !strings.Contains(stderr, "2 error(s)") {
			t.Errorf("stderr %q does not give the error count", stderr)
		}
		wantRows(t, out, map[string][]string{
			"alice": {"alice", "ck1", "up", "10.89.1.1/24", "fd89:1::1/64", "yes", "yes", "-"},
			"bob":   {"bob", "ck2", "up", "10.89.2.1/24", "-", "no", "no", "rp_filter=1 (strict); no default route; plaintext password"},
			"carol": {"carol", "ck3", "down", "10.89.3.1/24", "-", "no", "no", "admin down"},
			"dave":  {"dave", "ck9", "missing", "-", "-", "-", "-", "no such interface"},
			"eve":   {"eve", "-", "-", "-", "-", "-", "-", "kernel routing"},
		})
		wantLines(t, out,
			"errors:",
			`  server.listen[3] "192.0.2.1:1080": 192.0.2.1 is not an address of this host: the daemon cannot listen there and will not start`,
			"  interface ck9 (users[3] dave): no such interface: the daemon starts, but the flows of dave get reply 0x03 until it appears",
			"warnings:",
			"  "+cfg+": mode 0644: readable by others, and it holds passwords or password hashes",
			"  users[1] bob: plaintext password in the file",
			"  interface ck2 (users[1] bob): strict reverse-path filtering, rp_filter=1 (the larger of net.ipv4.conf.all.rp_filter=0 and net.ipv4.conf.ck2.rp_filter=1)",
			"  interface ck2 (users[1] bob): no default route out of it, IPv4 or IPv6, in any routing table",
			"  interface ck3 (users[2] carol): down, administratively down (ip link set ck3 up)",
			"  /etc/resolv.conf: nameserver 127.0.0.53 on loopback (127.0.0.53 is the systemd-resolved stub",
			"FAIL: 2 errors, 6 warnings",
		)
		for _, absent := range []string{"server.listen[0]", "server.listen[1]", "server.listen[2]", "metrics.listen", "interface ck1"} {
			if strings.Contains(out, absent) {
				t.Errorf("output mentions %s, which is fine", absent)
			}
		}
	})

	t.Run("nonlocal bind", func(t *testing.T) {
		nstest.IP(t, "netns", "exec", p, "sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1")
		t.Cleanup(func() { nstest.IP(t, "netns", "exec", p, "sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=0") })
		resolvConf(t, p, "nameserver 10.89.1.2\n")
		cfg := writeFile(t, dir, "nonlocal.toml", 0o600, "[server]\nlisten = [\"192.0.2.1:1080\", \"[2001:db8::1]:1080\"]\n"+users("alice@ck1"))
		out, _, code := runIn(t, p, bin, "-config", cfg, "-check")
		if code == 0 {
			t.Errorf("exit status 0, want non-zero: ip_nonlocal_bind is IPv4 only\n%s", out)
		}
		wantLines(t, out,
			`  server.listen[1] "[2001:db8::1]:1080": 2001:db8::1 is not an address of this host`,
			`  server.listen[0] "192.0.2.1:1080": 192.0.2.1 is not an address of this host; net.ipv4.ip_nonlocal_bind=1 lets the daemon listen there anyway`,
			"FAIL: 1 error, 1 warning",
		)
	})

	t.Run("good", func(t *testing.T) {
		resolvConf(t, p, "nameserver 10.89.1.2\n")
		cfg := writeFile(t, dir, "good.toml", 0o640, "[server]\nlisten = [\"10.89.1.1:1080\", \"[fd89:1::1]:1080\"]\n"+users("alice@ck1"))
		out, stderr, code := runIn(t, p, bin, "-config", cfg, "-check")
		t.Logf("output:\n%s", out)
		if code != 0 {
			t.Errorf("exit status %d, want 0; stderr: %s", code, stderr)
		}
		wantRows(t, out, map[string][]string{
			"alice": {"alice", "ck1", "up", "10.89.1.1/24", "fd89:1::1/64", "yes", "yes", "-"},
		})
		wantLines(t, out, "OK: 0 errors, 0 warnings")
	})

	t.Run("unknown key", func(t *testing.T) {
		cfg := writeFile(t, dir, "unknown.toml", 0o600, "[server]\nlisen = [\"10.89.1.1:1080\"]\n"+users("alice@ck1")+"interfce = \"ck2\"\n")
		out, stderr, code := runIn(t, p, bin, "-config", cfg, "-check")
		if code == 0 {
			t.Errorf("exit status 0, want non-zero")
		}
		for _, key := range []string{"server.lisen", "users[0].interfce"} {
			if !strings.Contains(stderr+out, key) {
				t.Errorf("output does not name %s:\nstdout: %s\nstderr: %s", key, out, stderr)
			}
		}
	})

	t.Run("no config", func(t *testing.T) {
		if _, err := os.Stat("/etc/ifsocks/config.toml"); !errors.Is(err, fs.ErrNotExist) {
			t.Skip("this host has /etc/ifsocks/config.toml")
		}
		out, _, code := runIn(t, p, bin, "-check")
		if code != 0 || !strings.HasPrefix(out, "nothing to check: ") || !strings.Contains(out, "built-in default: listen on 127.0.0.1:1080") {
			t.Errorf("-check without a file: exit %d, output %q; want 0 and \"nothing to check\" with the default described", code, out)
		}
	})
}

// waitOperUp waits until the kernel reports the links operationally up
// (operstate UP, which is what sets IFF_RUNNING).
func waitOperUp(tb testing.TB, ns string, links ...string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, l := range links {
		for {
			out, err := nstest.IPErr("-n", ns, "-o", "link", "show", "dev", l)
			if err == nil && strings.Contains(out, " state UP ") {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s in %s not operationally up after 5s: %s %v", l, ns, out, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func writeFile(tb testing.TB, dir, name string, mode os.FileMode, text string) string {
	tb.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		tb.Fatal(err)
	}
	return path
}

// runIn runs bin with args in namespace ns and returns its output and
// exit status.
func runIn(tb testing.TB, ns, bin string, args ...string) (stdout, stderr string, code int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := (&nstest.NS{Name: ns}).Command(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && ctx.Err() == nil:
		code = exitErr.ExitCode()
	default:
		tb.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", bin, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), errb.String(), code
}

// wantRows finds the table in out and compares the rows of the named
// users, cell by cell. Columns are separated by two or more spaces.
func wantRows(tb testing.TB, out string, want map[string][]string) {
	tb.Helper()
	got := map[string][]string{}
	inTable := false
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "USER "):
			inTable = true
		case inTable && line == "":
			inTable = false
		case inTable:
			cells := regexp.MustCompile(`\s{2,}`).Split(line, -1)
			got[cells[0]] = cells
		}
	}
	if len(got) != len(want) {
		tb.Errorf("table has %d rows, want %d:\n%s", len(got), len(want), out)
	}
	for user, w := range want {
		if g := got[user]; strings.Join(g, "|") != strings.Join(w, "|") {
			tb.Errorf("row of %s:\n got %q\nwant %q", user, g, w)
		}
	}
}

// wantLines wants, in order, lines of out that start with each prefix.
func wantLines(tb testing.TB, out string, prefixes ...string) {
	tb.Helper()
	lines := strings.Split(out, "\n")
	i := 0
	for _, p := range prefixes {
		for i < len(lines) && !strings.HasPrefix(lines[i], p) {
			i++
		}
		if i == len(lines) {
			tb.Errorf("no line starting with %q (after the previous ones) in:\n%s", p, out)
			return
		}
		i++
	}
}

// resolvConf sets the /etc/resolv.conf that `ip netns exec` bind-mounts
// for processes in ns.
func resolvConf(tb testing.TB, ns, text string) {
	tb.Helper()
	if err := (&nstest.NS{Name: ns}).WriteResolvConf(text); err != nil {
		tb.Fatal(err)
	}
}
