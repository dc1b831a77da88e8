package link

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			tb.Fatal("namespace tests must run as root in CI")
		}
		tb.Skip("needs root for network namespaces")
	}
}

func ip(tb testing.TB, args ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestWatcherInNamespace runs a real watcher inside a fresh network
// namespace and checks it sees an interface go down, come up, get renamed
// and be deleted.
func TestWatcherInNamespace(t *testing.T) {
	requireRoot(t)
	ns := fmt.Sprintf("ifsl-%d", os.Getpid())
	exec.Command("ip", "netns", "del", ns).Run() // leftover of a killed run
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip(t, "-n", ns, "link", "add", "wat0", "type", "veth", "peer", "name", "wat1")
	ip(t, "-n", ns, "link", "set", "wat0", "up")
	ip(t, "-n", ns, "link", "set", "wat1", "up")

	changes := make(chan change, 16)
	w := New(zap.NewNop(), func(name string, old, new State) {
		if strings.HasPrefix(name, "wat0") {
			changes <- change{name, old, new}
		}
	})
	w.Watch([]string{"wat0"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// The netlink socket is made in the namespace of the thread that
		// subscribes. This thread is never unlocked, so Go discards it
		// when the goroutine ends instead of reusing it elsewhere.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err == nil {
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
		}
		if err != nil {
			done <- err
			return
		}
		done <- w.Run(ctx)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	expect := func(want change) {
		t.Helper()
		select {
		case got := <-changes:
			if got != want {
				t.Fatalf("change %v, want %v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no change within 5s, want %v", want)
		}
	}
	expect(change{"wat0", Missing, Up})            // from the initial listing
	ip(t, "-n", ns, "link", "set", "wat1", "down") // peer down: carrier lost
	expect(change{"wat0", Up, Down})
	ip(t, "-n", ns, "link", "set", "wat1", "up")
	expect(change{"wat0", Down, Up})
	ip(t, "-n", ns, "link", "set", "wat0", "down")
	expect(change{"wat0", Up, Down})
	ip(t, "-n", ns, "link", "set", "wat0", "name", "wat9")
	expect(change{"wat0", Down, Missing})
	ip(t, "-n", ns, "link", "set", "wat9", "name", "wat0")
	expect(change{"wat0", Missing, Down})
	ip(t, "-n", ns, "link", "del", "wat0")
	expect(change{"wat0", Down, Missing})
}
