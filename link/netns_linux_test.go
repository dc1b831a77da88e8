package link

import (
	"context"
	"fmt"
	"net/netip"
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

// TestOwnerFollowsAddresses: the address table answers which interface
// holds an address, and follows addresses added, moved and removed.
func TestOwnerFollowsAddresses(t *testing.T) {
	requireRoot(t)
	ns := fmt.Sprintf("ifsl-%d-own", os.Getpid())
	exec.Command("ip", "netns", "del", ns).Run() // leftover of a killed run
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, d := range []string{"own0", "own1"} {
		ip(t, "-n", ns, "link", "add", d, "type", "veth", "peer", "name", d+"p")
		ip(t, "-n", ns, "link", "set", d, "up")
	}
	ip(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", "own0")

	w := New(zap.NewNop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	primed := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/run/netns/" + ns)
		if err == nil {
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
		}
		if err == nil {
			err = w.Prime()
		}
		primed <- err
		if err != nil {
			done <- nil
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
	if err := <-primed; err != nil {
		t.Fatal(err)
	}
	owner := func(a string) string {
		n, _ := w.Owner(netip.MustParseAddr(a))
		return n
	}
	wait := func(a, want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for owner(a) != want {
			if time.Now().After(deadline) {
				t.Fatalf("owner of %s = %q, want %q", a, owner(a), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("10.9.0.1", "own0") // from Prime
	ip(t, "-n", ns, "addr", "add", "fd09::1/64", "dev", "own1", "nodad")
	wait("fd09::1", "own1")
	ip(t, "-n", ns, "addr", "del", "10.9.0.1/24", "dev", "own0")
	wait("10.9.0.1", "")
	ip(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", "own1")
	wait("10.9.0.1", "own1")
	if got := owner("::ffff:10.9.0.1"); got != "own1" {
		t.Errorf("owner of the IPv4-mapped form = %q, want own1", got)
	}
}
