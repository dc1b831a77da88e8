//go:build linux

package test

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Users with several interfaces: failover, round-robin and hash. A NIC
// taken down is brought back (up, default route) in cleanup too, though
// the topology dies with the test anyway.

// egListen is where the multi-interface users connect.
var egListen = net.JoinHostPort(egProxy, "1080")

func startMultiDaemon(t *testing.T, topo *topology, u nstest.User, strategy string) *opsDaemon {
	t.Helper()
	body := userBlock(u, fmt.Sprintf("interfaces = [\"wan1\", \"wan2\"]\nstrategy = %q", strategy))
	return startEgressDaemon(t, topo, egressConfig([]string{egListen}, body), egListen)
}

// setDown takes a wan NIC of P down and waits (bounded) until the
// daemon's watcher has seen it; it returns how long that took.
func setDown(t *testing.T, od *opsDaemon, wan string) time.Duration {
	t.Helper()
	mark := od.mark()
	start := time.Now()
	if _, err := nstest.IPErr("-n", od.topo.P, "link", "set", wan, "down"); err != nil {
		t.Fatal(err)
	}
	od.waitStates(t, mark, wan, "down")
	return time.Since(start)
}

// setUp brings a wan NIC back with its default route and waits (bounded)
// until the watcher has seen it up.
func setUp(t *testing.T, od *opsDaemon, wan string) time.Duration {
	t.Helper()
	mark := od.mark()
	start := time.Now()
	if err := restoreWan(od.topo, wan); err != nil {
		t.Fatal(err)
	}
	od.waitStates(t, mark, wan, "up")
	return time.Since(start)
}

// Test 4a: failover, wan2 first: the order given, against the kernel's
// preference for wan1. wan2 down: the next request leaves by wan1, its flow
// line lists wan2 as skipped and the skip is counted; wan2 back: the next
// request leaves by wan2 again, nothing skipped.
func TestNICFailover(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	body := userBlock(egFo, "interfaces = [\"wan2\", \"wan1\"]\nstrategy = \"failover\"")
	od := startEgressDaemon(t, topo, egressConfig([]string{egListen}, body), egListen)
	t.Cleanup(func() { _ = restoreWan(topo, "wan2") })
	C := topo.C
	skipped := map[string]string{"interface": "wan2", "reason": "down"}

	for range 3 {
		line := wantSeen(t, od, C, egListen, egFo, egTarget, seenWan2)
		wantFields(t, line, map[string]any{"interface": "wan2", "outcome": "ok"})
		if s := skippedOf(line); s != nil {
			t.Errorf("wan2 up: skipped %q, want none", s)
		}
	}

	took := setDown(t, od, "wan2")
	t.Logf("watcher saw wan2 down %v after ip link set", took.Round(time.Millisecond))
	for i := range 3 {
		start := time.Now()
		line := wantSeen(t, od, C, egListen, egFo, egTarget, seenWan1)
		if i == 0 {
			t.Logf("first request after wan2 down: %v", time.Since(start).Round(time.Millisecond))
		}
		wantFields(t, line, map[string]any{"interface": "wan1", "outcome": "ok"})
		if s := skippedOf(line); !slices.Equal(s, []string{"wan2: interface is down"}) {
			t.Errorf("wan2 down: skipped %q, want [\"wan2: interface is down\"]", s)
		}
	}
	wantMetric(t, scrape(t, topo.P, egMetrics), "ifsocks_egress_skipped_total", skipped, 3)

	took = setUp(t, od, "wan2")
	t.Logf("watcher saw wan2 up %v after ip link set + route", took.Round(time.Millisecond))
	for range 3 {
		line := wantSeen(t, od, C, egListen, egFo, egTarget, seenWan2)
		wantFields(t, line, map[string]any{"interface": "wan2", "outcome": "ok"})
		if s := skippedOf(line); s != nil {
			t.Errorf("wan2 back: skipped %q, want none", s)
		}
	}
	wantMetric(t, scrape(t, topo.P, egMetrics), "ifsocks_egress_skipped_total", skipped, 3)

	// Without waiting for the watcher: the request right after the link
	// change may be planned on wan2 still, whose connect then fails
	// (ENETUNREACH) and moves on to wan1 within the same request.
	if _, err := nstest.IPErr("-n", topo.P, "link", "set", "wan2", "down"); err != nil {
		t.Fatal(err)
	}
	line := wantSeen(t, od, C, egListen, egFo, egTarget, seenWan1)
	if s := skippedOf(line); len(s) != 1 || !strings.HasPrefix(s[0], "wan2: ") {
		t.Errorf("right after wan2 down: skipped %q, want wan2 with a reason", s)
	}
	t.Logf("right after wan2 down: skipped %q", skippedOf(line))
}

// Test 4b: round-robin. 100 flows, one after another, spread evenly over
// wan1 and wan2 (each 50 ± 5), and the flow lines agree with what the
// upstream saw.
func TestNICRoundRobin(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	od := startMultiDaemon(t, topo, egRR, "round-robin")

	const flows = 100
	seen := map[string]int{}
	var order []string
	clients := map[string]string{} // client end -> what the upstream saw
	for range flows {
		f := mustFetch(t, topo.C, egListen, egRR, egTarget)
		seen[f.seen]++
		order = append(order, f.seen[len(f.seen)-3:])
		clients[f.client] = f.seen
	}
	// Every flow line names the NIC the upstream saw.
	logged := map[string]int{}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		lines := map[string]map[string]any{}
		for _, m := range od.logEntries() {
			if c := fmt.Sprint(m["client"]); m["msg"] == "flow" && clients[c] != "" {
				lines[c] = m
			}
		}
		if len(lines) < flows && time.Now().Before(deadline) {
			continue
		}
		if len(lines) < flows {
			t.Fatalf("%d flow lines of %d flows after 3s", len(lines), flows)
		}
		for c, m := range lines {
			logged[fmt.Sprint(m["interface"])]++
			if want := map[string]string{seenWan1: "wan1", seenWan2: "wan2"}[clients[c]]; m["interface"] != want {
				t.Errorf("upstream saw %q, flow line says interface %v", clients[c], m["interface"])
			}
		}
		break
	}
	t.Logf("upstream saw %v; flow lines %v; first 10: %v", seen, logged, order[:10])
	if len(seen) != 2 {
		t.Fatalf("upstream saw %v, want only %q and %q", seen, seenWan1, seenWan2)
	}
	for _, s := range []string{seenWan1, seenWan2} {
		if n := seen[s]; n < flows/2-flows/20 || n > flows/2+flows/20 {
			t.Errorf("%q: %d of %d flows, want %d ± %d", s, n, flows, flows/2, flows/20)
		}
	}
}

// Test 4c: hash. The same target leaves by the same NIC every time; the
// targets spread over both NICs; with wan1 down, wan1's targets move to
// wan2 and wan2's stay; with wan1 back, every target is where it was.
func TestNICHash(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	od := startMultiDaemon(t, topo, egHash, "hash")
	t.Cleanup(func() { _ = restoreWan(topo, "wan1") })
	C := topo.C

	targets := make([]string, egSvcCount)
	for i := range targets {
		targets[i] = net.JoinHostPort(egSvcAddr(i), egWebPort)
	}
	// where returns the NIC each target leaves by, asking each `repeat`
	// times and failing if a target ever changes NIC.
	where := func(t *testing.T, repeat int) map[string]string {
		t.Helper()
		out := map[string]string{}
		for range repeat {
			for _, tg := range targets {
				f := mustFetch(t, C, egListen, egHash, tg)
				if prev, ok := out[tg]; ok && prev != f.seen {
					t.Errorf("%s: upstream saw %q, earlier %q", tg, f.seen, prev)
				}
				out[tg] = f.seen
			}
		}
		return out
	}
	count := func(m map[string]string) map[string]int {
		c := map[string]int{}
		for _, v := range m {
			c[v]++
		}
		return c
	}

	before := where(t, 4)
	t.Logf("%d targets, 4 times each: %v", len(targets), count(before))
	if c := count(before); c[seenWan1] == 0 || c[seenWan2] == 0 || len(c) != 2 {
		t.Fatalf("targets by NIC %v: want both %q and %q used (and nothing else)", c, seenWan1, seenWan2)
	}

	setDown(t, od, "wan1")
	down := where(t, 2)
	for _, tg := range targets {
		if down[tg] != seenWan2 {
			t.Errorf("wan1 down: %s left as %q, want %q", tg, down[tg], seenWan2)
		}
	}
	// A target that was on wan1 names it as skipped; one that was on
	// wan2 still lists wan1 (it is checked before hashing), but was not
	// moved.
	var moved string
	for _, tg := range targets {
		if before[tg] == seenWan1 {
			moved = tg
			break
		}
	}
	f := mustFetch(t, C, egListen, egHash, moved)
	line := od.flowOf(t, f.client)
	wantFields(t, line, map[string]any{"interface": "wan2", "outcome": "ok"})
	if s := skippedOf(line); !slices.Equal(s, []string{"wan1: interface is down"}) {
		t.Errorf("%s with wan1 down: skipped %q, want [\"wan1: interface is down\"]", moved, s)
	}

	setUp(t, od, "wan1")
	after := where(t, 2)
	for _, tg := range targets {
		if after[tg] != before[tg] {
			t.Errorf("wan1 back: %s left as %q, before the outage %q", tg, after[tg], before[tg])
		}
	}
}
