package link

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestWatcherInNamespace runs a real watcher inside a fresh network
// namespace and checks it sees an interface go down, come up, get renamed
// and be deleted.
func TestWatcherInNamespace(t *testing.T) {
	ns := nstest.New(t, "ifsl", "watch").Name
	nstest.IP(t, "-n", ns, "link", "add", "wat0", "type", "veth", "peer", "name", "wat1")
	nstest.IP(t, "-n", ns, "link", "set", "wat0", "up")
	nstest.IP(t, "-n", ns, "link", "set", "wat1", "up")

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
		// subscribes.
		done <- nstest.Enter(ns, func() error { return w.Run(ctx) })
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
	// From the initial listing. A veth gets its carrier a moment after
	// both ends are up, so the listing may still see wat0 without it:
	// then Down first, and Up when the carrier comes.
	select {
	case got := <-changes:
		switch got {
		case change{"wat0", Missing, Up}:
		case change{"wat0", Missing, Down}:
			expect(change{"wat0", Down, Up})
		default:
			t.Fatalf("first change %v, want %v", got, change{"wat0", Missing, Up})
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5s from the initial listing")
	}
	nstest.IP(t, "-n", ns, "link", "set", "wat1", "down") // peer down: carrier lost
	expect(change{"wat0", Up, Down})
	nstest.IP(t, "-n", ns, "link", "set", "wat1", "up")
	expect(change{"wat0", Down, Up})
	nstest.IP(t, "-n", ns, "link", "set", "wat0", "down")
	expect(change{"wat0", Up, Down})
	nstest.IP(t, "-n", ns, "link", "set", "wat0", "name", "wat9")
	expect(change{"wat0", Down, Missing})
	nstest.IP(t, "-n", ns, "link", "set", "wat9", "name", "wat0")
	expect(change{"wat0", Missing, Down})
	nstest.IP(t, "-n", ns, "link", "del", "wat0")
	expect(change{"wat0", Down, Missing})
}

// TestOwnerFollowsAddresses: the address table answers which interface
// holds an address, and follows addresses added, moved and removed.
func TestOwnerFollowsAddresses(t *testing.T) {
	ns := nstest.New(t, "ifsl", "own").Name
	for _, d := range []string{"own0", "own1"} {
		nstest.IP(t, "-n", ns, "link", "add", d, "type", "veth", "peer", "name", d+"p")
		nstest.IP(t, "-n", ns, "link", "set", d, "up")
	}
	nstest.IP(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", "own0")

	w := New(zap.NewNop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	primed := make(chan error, 1)
	go func() {
		var ran bool
		err := nstest.Enter(ns, func() error {
			if err := w.Prime(); err != nil {
				return err
			}
			primed <- nil
			ran = true
			return w.Run(ctx)
		})
		if !ran {
			primed <- err
			err = nil
		}
		done <- err
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
	nstest.IP(t, "-n", ns, "addr", "add", "fd09::1/64", "dev", "own1", "nodad")
	wait("fd09::1", "own1")
	nstest.IP(t, "-n", ns, "addr", "del", "10.9.0.1/24", "dev", "own0")
	wait("10.9.0.1", "")
	nstest.IP(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", "own1")
	wait("10.9.0.1", "own1")
	if got := owner("::ffff:10.9.0.1"); got != "own1" {
		t.Errorf("owner of the IPv4-mapped form = %q, want own1", got)
	}
}
