//go:build linux

package test

import (
	"fmt"
	"github.com/ifsocks/ifsocks/internal/nstest"
	"net"
	"strings"
	"testing"
	"time"
)

// Egress decided by addresses: interface = "ingress" (the NIC that holds
// the address the client connected to) and source_ip (the NIC that holds
// the source address, which is bound).

// Test 2: a client that connects to the proxy's address on wan1 leaves by
// wan1, on wan2 by wan2, in turn on the same listener — for a user with
// interface = "ingress" and for a [[listeners]] entry without
// authentication that has it.
func TestNICIngress(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	const userPort, anonPort = "1090", "1091"
	body := userBlock(egIngrid, `interface = "ingress"`) + `
[[listeners]]
address = "0.0.0.0:` + anonPort + `"
auth = "none"
allow_clients = ["10.233.0.0/16"]
interface = "ingress"
`
	od := startEgressDaemon(t, topo, egressConfig([]string{"0.0.0.0:" + userPort}, body),
		net.JoinHostPort(egProxy, userPort), net.JoinHostPort(egProxy, anonPort))

	for _, c := range []struct {
		name string
		u    nstest.User
		port string
	}{
		{"user", egIngrid, userPort},
		{"no-auth listener", egAnon, anonPort},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Alternate, so a choice made once (per listener or per
			// user) cannot pass.
			for round := range 3 {
				for _, nic := range []struct{ addr, iface, seen string }{
					{egWan1, "wan1", seenWan1},
					{egWan2, "wan2", seenWan2},
				} {
					proxy := net.JoinHostPort(nic.addr, c.port)
					line := wantSeen(t, od, topo.C, proxy, c.u, egTarget, nic.seen)
					wantFields(t, line, map[string]any{"user": c.u.Name, "interface": nic.iface, "reply": float64(0), "outcome": "ok"})
					if round == 0 {
						t.Logf("via %s: upstream saw %q, flow interface %v local %v", proxy, nic.seen, line["interface"], line["local"])
					}
				}
			}
		})
	}
}

// Test 3: source_ip set to wan2's secondary address: the upstream sees
// that address (not wan2's primary one, which the kernel would pick)
// arriving by wan2, the reply's BND.ADDR is it; a source_ip that is not on
// the host gets reply 0x03 at once.
func TestNICSourceIP(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	listen := net.JoinHostPort(egProxy, "1080")
	body := userBlock(egSid, fmt.Sprintf("source_ip = %q", egWan2Second)) +
		userBlock(egNos, `source_ip = "10.233.7.7"`) +
		userBlock(egKern, "")
	od := startEgressDaemon(t, topo, egressConfig([]string{listen}, body), listen)

	t.Run("secondary address", func(t *testing.T) {
		for range 3 {
			f := mustFetch(t, topo.C, listen, egSid, egTarget)
			if want := egWan2Second + " br2"; f.seen != want {
				t.Errorf("upstream saw %q, want %q", f.seen, want)
			}
			if f.bound.Addr().String() != egWan2Second || f.bound.Port() == 0 {
				t.Errorf("BND.ADDR:PORT %v, want %s with a port", f.bound, egWan2Second)
			}
			line := od.flowOf(t, f.client)
			wantFields(t, line, map[string]any{"user": egSid.Name, "interface": "wan2", "reply": float64(0), "outcome": "ok"})
			if l := fmt.Sprint(line["local"]); !strings.HasPrefix(l, egWan2Second+":") {
				t.Errorf("flow local %s, want %s:port", l, egWan2Second)
			}
		}
	})

	// The same network without source_ip: the kernel's choice, wan1.
	t.Run("control", func(t *testing.T) {
		wantSeen(t, od, topo.C, listen, egKern, egTarget, seenWan1)
	})

	t.Run("not on the host", func(t *testing.T) {
		start := time.Now()
		res := socksAsEg(t, topo.C, listen, egNos, egTarget)
		took := time.Since(start)
		if res.authStatus != 0 || res.reply != 3 || !res.closed {
			t.Fatalf("auth %d reply %d closed %v, want 0, 0x03, closed", res.authStatus, res.reply, res.closed)
		}
		if took > time.Second {
			t.Errorf("reply 0x03 after %v, want it at once (< 1s)", took)
		}
		line := od.flowOf(t, res.localAddr)
		// Like a missing interface: the host's state, not a fault of
		// the daemon (info, "unreachable").
		wantFields(t, line, map[string]any{"level": "info", "user": egNos.Name, "reply": float64(3), "outcome": "unreachable"})
		if e := fmt.Sprint(line["error"]); !strings.Contains(e, "10.233.7.7") {
			t.Errorf("flow error %q does not name the source address", e)
		}
	})
}
