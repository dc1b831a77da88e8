//go:build linux

package test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// sd_notify: with NOTIFY_SOCKET set the daemon reports READY=1 once
// listening, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around every
// reload, and STOPPING=1 at shutdown: the protocol of systemd's
// Type=notify-reload.

// notifySocket is the test's end of NOTIFY_SOCKET: a unixgram socket in a
// temporary directory (the file system is shared with P).
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "ifst-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ns := &notifySocket{path: filepath.Join(dir, "notify.sock")}
	ns.conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.conn.Close() })
	return ns
}

var errNoMessage = errors.New("no message")

// next returns the next message, or errNoMessage after limit.
func (ns *notifySocket) next(limit time.Duration) (string, error) {
	buf := make([]byte, 4096)
	_ = ns.conn.SetReadDeadline(time.Now().Add(limit))
	n, _, err := ns.conn.ReadFromUnix(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "", errNoMessage
	}
	return string(buf[:n]), err
}

func (ns *notifySocket) want(t *testing.T, want string, limit time.Duration) {
	t.Helper()
	got, err := ns.next(limit)
	if err != nil || got != want {
		t.Fatalf("sd_notify message %q (%v), want %q", got, err, want)
	}
}

// wantReloading checks RELOADING=1 with a MONOTONIC_USEC between the
// monotonic clock before the SIGHUP and now.
func (ns *notifySocket) wantReloading(t *testing.T, before int64) {
	t.Helper()
	got, err := ns.next(5 * time.Second)
	after := monotonicUsec(t)
	if err != nil {
		t.Fatalf("no RELOADING=1 message after SIGHUP: %v", err)
	}
	rest, ok := strings.CutPrefix(got, "RELOADING=1\nMONOTONIC_USEC=")
	usec, perr := strconv.ParseInt(rest, 10, 64)
	if !ok || perr != nil || usec < before || usec > after {
		t.Fatalf("sd_notify message %q, want \"RELOADING=1\\nMONOTONIC_USEC=<n>\" with %d <= n <= %d", got, before, after)
	}
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// Test 4.
func TestOpsNotify(t *testing.T) {
	e, _ := getDaemon(t)
	const listen = "10.231.0.1:1681"
	ns := listenNotify(t)
	cfg := opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice}}
	d := launchOpsDaemon(t, cfg, "NOTIFY_SOCKET="+ns.path)

	// READY=1 is the first message, and comes once the daemon listens:
	// one connect right after it must succeed.
	ns.want(t, "READY=1", 10*time.Second)
	c, err := nstest.Dialer{NS: e.topo.C, Timeout: 2 * time.Second}.Dial("tcp", listen)
	if err != nil {
		t.Fatalf("connect right after READY=1: %v", err)
	}
	c.Close()
	if got := whoamiVia(t, e.topo.C, listen, opsAlice, svcV4+":8080"); got != wan1V4 {
		t.Errorf("alice: whoami saw %s, want %s", got, wan1V4)
	}

	// A good reload and a failed one: each RELOADING=1, then READY=1.
	for i, text := range []string{
		opsConfig{listen: cfg.listen, users: []nstest.User{opsAlice, opsDave}}.render(t),
		cfg.render(t) + "\n[bogus]\nkey = 1\n",
	} {
		d.writeConfig(t, text)
		before := monotonicUsec(t)
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		ns.wantReloading(t, before)
		ns.want(t, "READY=1", 5*time.Second)
		// The log reaches us through a pipe: allow it a moment.
		msg := []string{msgReloaded, msgReloadFailed}[i]
		for deadline := time.Now().Add(2 * time.Second); d.countMsg(msg) != 1 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if d.countMsg(msg) != 1 {
			t.Errorf("reload %d: %d %q lines, want 1", i+1, d.countMsg(msg), msg)
		}
	}

	// SIGTERM: STOPPING=1, exit status 0, and nothing after.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ns.want(t, "STOPPING=1", 5*time.Second)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("daemon still running 5s after SIGTERM")
	}
	if d.exitErr() != nil {
		t.Errorf("daemon exit: %v, want status 0", d.exitErr())
	}
	if got, err := ns.next(200 * time.Millisecond); err != errNoMessage {
		t.Errorf("message after STOPPING=1: %q (%v), want none", got, err)
	}
}
