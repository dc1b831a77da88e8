//go:build linux

package soak

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Test 3: interface flaps under the soak load.

// soakFlap is what one wan2 down/up cycle measured.
type soakFlap struct {
	down, restored, recovered time.Time
	liveBob                   int           // bob's tunnels when wan2 went down
	ipDown                    time.Duration // `ip link set wan2 down` itself
	detectDown, detectUp      time.Duration // until the daemon logged the change
	cutAll                    time.Duration // until every live bob tunnel had failed
	cutFlows                  int           // flows the daemon said it closed
	firstBack, allBack        time.Duration // after the routes were back
}

// TestSoakFlap: under the soak load, wan2 (bob's NIC) goes down, stays
// down a moment, comes back and gets its IPv6 address and default routes
// back, again and again. Each time every tunnel of bob is cut and bob's
// tunnels work again after the NIC is back (the load reopens them); alice
// on wan1 sees not a single failure; failures of bob happen only inside
// the flap windows; afterwards the daemon is back to its baseline.
func TestSoakFlap(t *testing.T) {
	r := newSoakRun(t)
	l := r.startLoad(t)
	smp := r.sample(t, l)
	start := time.Now()
	var bobSlots []*soakSlot
	for _, s := range l.slots {
		if s.user.u.Name == soakBob.Name {
			bobSlots = append(bobSlots, s)
		}
	}
	t.Cleanup(func() { _ = setWan2(r.topo, true) }) // whatever happened, for the daemon's stop
	cutLimit := 2*r.p.interval + r.p.timeout
	recoverLimit := max(30*time.Second, time.Duration(len(bobSlots))*10*time.Millisecond)

	var flaps []soakFlap
	for i := range r.p.flaps {
		r.hold(t, r.p.flapSteady)
		var f soakFlap
		gens := make([]uint32, len(bobSlots))
		wasLive := make([]bool, len(bobSlots))
		for j, s := range bobSlots {
			gens[j], wasLive[j] = s.gen.Load(), s.live.Load()
			if wasLive[j] {
				f.liveBob++
			}
		}
		evIdx, cutIdx := r.d.sink.marks()
		l.marks.Add(1)

		f.down = time.Now()
		if err := setWan2(r.topo, false); err != nil {
			t.Fatal(err)
		}
		f.ipDown = time.Since(f.down)
		f.detectDown = r.waitIfaceEvent(t, evIdx, "down", f.down)
		// Every tunnel of bob that was live is cut: its slot moves on to
		// a new tunnel (which fails while wan2 is down).
		for {
			cut := 0
			for j, s := range bobSlots {
				if !wasLive[j] || s.gen.Load() != gens[j] || !s.live.Load() {
					cut++
				}
			}
			if cut == len(bobSlots) {
				f.cutAll = time.Since(f.down)
				break
			}
			if time.Since(f.down) > cutLimit {
				t.Fatalf("flap %d: %d of bob's %d tunnels still live %v after wan2 went down", i, len(bobSlots)-cut, len(bobSlots), cutLimit)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if rest := r.p.flapDown - time.Since(f.down); rest > 0 {
			time.Sleep(rest)
		}
		r.alive(t)
		evIdx, _ = r.d.sink.marks()
		up := time.Now()
		if err := setWan2(r.topo, true); err != nil {
			t.Fatal(err)
		}
		f.restored = time.Now()
		f.detectUp = r.waitIfaceEvent(t, evIdx, "up", up)
		// Recovery: every slot of bob has a new tunnel that verified an
		// exchange after the routes were back.
		for {
			back := 0
			for j, s := range bobSlots {
				if s.gen.Load() != gens[j] && s.lastOK.Load() > f.restored.UnixNano() {
					back++
				}
			}
			if back > 0 && f.firstBack == 0 {
				f.firstBack = time.Since(f.restored)
			}
			if back == len(bobSlots) {
				f.allBack = time.Since(f.restored)
				break
			}
			if time.Since(f.restored) > recoverLimit {
				t.Fatalf("flap %d: %d of bob's %d tunnels not back %v after wan2 and its routes were; failures: %s",
					i, len(bobSlots)-back, len(bobSlots), recoverLimit, l.summarizeEvents(l.eventsCopy(), 5))
			}
			time.Sleep(20 * time.Millisecond)
		}
		f.recovered = time.Now()
		cuts, _ := r.d.sink.cutsSince(cutIdx)
		for _, c := range cuts {
			if c["interface"] == "wan2" {
				n, _ := c["flows"].(float64)
				f.cutFlows += int(n)
			}
		}
		flaps = append(flaps, f)
		t.Logf("flap %d at %s: %d bob tunnels live; ip link down took %v; daemon saw down after %v, cut %d flows; all cut (client) after %v; down for %v; up seen after %v; first bob tunnel back %v, all %d back %v after the routes",
			i, f.down.Format("15:04:05.000"), f.liveBob, f.ipDown.Round(time.Millisecond), f.detectDown.Round(time.Millisecond), f.cutFlows, f.cutAll.Round(time.Millisecond),
			f.restored.Sub(f.down).Round(time.Millisecond), f.detectUp.Round(time.Millisecond),
			f.firstBack.Round(time.Millisecond), len(bobSlots), f.allBack.Round(time.Millisecond))
	}
	r.hold(t, r.p.flapSteady)
	l.waitAllVerified(t, time.Now(), 4*r.p.interval+r.p.timeout)
	peak := smp.result(t, r.base, r.p.tunnels)
	l.finish(t, 2*r.p.timeout)
	elapsed := time.Since(start)
	r.drain(t)

	// alice never noticed; bob failed only inside the flap windows.
	var alice, bobOutside, bobInside []soakEvent
	for _, e := range l.eventsCopy() {
		switch {
		case e.user != soakBob.Name:
			alice = append(alice, e)
		case slices.ContainsFunc(flaps, func(f soakFlap) bool { return !e.at.Before(f.down) && !e.at.After(f.recovered) }):
			bobInside = append(bobInside, e)
		default:
			bobOutside = append(bobOutside, e)
		}
	}
	if len(alice) > 0 {
		t.Errorf("alice (wan1) saw failures during the wan2 flaps: %s", l.summarizeEvents(alice, 10))
	}
	if len(bobOutside) > 0 {
		t.Errorf("bob saw failures outside the flap windows: %s", l.summarizeEvents(bobOutside, 10))
	}
	var aliceU *soakUserLoad
	for _, u := range l.usersCopy() {
		if u.u.Name == soakAlice.Name {
			aliceU = u
		}
	}
	if n := aliceU.corrupt.Load() + aliceU.tunnelFails.Load() + aliceU.connectFails.Load(); n != 0 {
		t.Errorf("alice: %d failures, want 0", n)
	}
	st := r.wantServerClean(t, true) // cut tunnels' server sides time out
	// alice's counters must match exactly; her flows are all "ok".
	pm := r.wantMetricsMatch(t, l, func(u string) bool { return u != soakBob.Name }, "interface_lost", "unreachable", "relay_error", "reset", "timeout")
	for _, s := range pm.Series("ifsocks_flows_total") {
		if s.Labels["user"] == soakAlice.Name && s.Labels["outcome"] != "ok" {
			if v0, _ := r.pm0.Get("ifsocks_flows_total", s.Labels); s.Value != v0 {
				t.Errorf("ifsocks_flows_total%v grew by %v: alice's flows were touched by the wan2 flaps", s.Labels, s.Value-v0)
			}
		}
	}
	t.Logf("bob: %d failures inside the flap windows (%s)", len(bobInside), kinds(bobInside))
	lost, _ := pm.Get("ifsocks_flows_total", map[string]string{"protocol": "socks5", "user": "bob", "interface": "wan2", "outcome": "interface_lost"})
	lost0, _ := r.pm0.Get("ifsocks_flows_total", map[string]string{"protocol": "socks5", "user": "bob", "interface": "wan2", "outcome": "interface_lost"})
	unreach, _ := pm.Get("ifsocks_flows_total", map[string]string{"protocol": "socks5", "user": "bob", "interface": "wan2", "outcome": "unreachable"})
	t.Logf("daemon: bob's flows interface_lost +%v, unreachable %v", lost-lost0, unreach)
	logFlapStats(t, flaps)
	r.logBytes(t, l, st, elapsed)
	r.checkBaseline(t, peak)
}

// waitIfaceEvent waits (bounded) for the daemon to log wan2 reaching
// state after event index idx, and returns the time since since.
func (r *soakRun) waitIfaceEvent(t *testing.T, idx int, state string, since time.Time) time.Duration {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		evs, _ := r.d.sink.ifaceEventsSince(idx, "wan2")
		for _, e := range evs {
			if e.to == state {
				return e.at.Sub(since)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon logged no wan2 change to %q within 10s (changes: %v); log tail:\n%s", state, evs, r.d.sink.tail(20))
		}
	}
}

func kinds(evs []soakEvent) string {
	m := map[string]int{}
	for _, e := range evs {
		m[e.kind]++
	}
	return fmt.Sprint(m)
}

func logFlapStats(t *testing.T, flaps []soakFlap) {
	t.Helper()
	if len(flaps) == 0 {
		return
	}
	stat := func(name string, f func(soakFlap) time.Duration) string {
		ds := make([]time.Duration, len(flaps))
		for i, fl := range flaps {
			ds[i] = f(fl)
		}
		slices.Sort(ds)
		return fmt.Sprintf("%s min %v median %v max %v", name, ds[0].Round(time.Millisecond),
			ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
	}
	t.Logf("%d flaps: %s", len(flaps), strings.Join([]string{
		stat("down seen", func(f soakFlap) time.Duration { return f.detectDown }),
		stat("all bob tunnels cut", func(f soakFlap) time.Duration { return f.cutAll }),
		stat("up seen", func(f soakFlap) time.Duration { return f.detectUp }),
		stat("first bob tunnel back", func(f soakFlap) time.Duration { return f.firstBack }),
		stat("all bob tunnels back", func(f soakFlap) time.Duration { return f.allBack }),
	}, "; "))
}
