//go:build linux

package test

import (
	"net"
	"testing"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Test 5: mark = 100 and no interface. A policy rule sends fwmark 100 to a
// table whose default route is wan2, while the main table prefers wan1:
// the marked user's flows leave by wan2, an unmarked user's by wan1, and
// once the rule is gone the marked user's flows follow the main table too.
func TestNICMark(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	P := topo.P
	for _, s := range [][]string{
		{"-n", P, "route", "add", "default", "via", egGw2, "dev", "wan2", "table", "100"},
		{"-n", P, "rule", "add", "fwmark", "100", "lookup", "100", "pref", "100"},
	} {
		if _, err := nstest.IPErr(s...); err != nil {
			t.Fatal(err)
		}
	}
	listen := net.JoinHostPort(egProxy, "1080")
	body := userBlock(egMika, "mark = 100") + userBlock(egKern, "")
	od := startEgressDaemon(t, topo, egressConfig([]string{listen}, body), listen)

	for range 3 {
		line := wantSeen(t, od, topo.C, listen, egMika, egTarget, seenWan2)
		// No interface is bound: the routing rule chose wan2.
		wantFields(t, line, map[string]any{"user": egMika.Name, "interface": "", "outcome": "ok"})
		wantSeen(t, od, topo.C, listen, egKern, egTarget, seenWan1)
	}

	if _, err := nstest.IPErr("-n", P, "rule", "del", "fwmark", "100", "lookup", "100", "pref", "100"); err != nil {
		t.Fatal(err)
	}
	wantSeen(t, od, topo.C, listen, egMika, egTarget, seenWan1)
}
