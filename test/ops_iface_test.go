//go:build linux

package test

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Interface watch: when an egress interface goes down or away, its flows
// are cut at once and new flows of its users are refused with 0x03 at once;
// when it is back, they work again, in the same process. Only wan3 (added
// for these tests) is ever taken down; alice on wan1 must not notice.

// ifaceFlap is one way of losing wan3.
type ifaceFlap struct {
	name  string
	lose  func(topo *topology) error
	state string // the watcher's final state for wan3 while lost
}

var ifaceFlaps = []ifaceFlap{
	{name: "admin-down", state: "down", lose: func(topo *topology) error {
		_, err := nstest.IPErr("-n", topo.P, "link", "set", "wan3", "down")
		return err
	}},
	// The peer going down takes wan3's carrier: up but not running.
	{name: "carrier-lost", state: "down", lose: func(topo *topology) error {
		_, err := nstest.IPErr("-n", topo.U, "link", "set", "up3", "down")
		return err
	}},
	{name: "deleted", state: "missing", lose: func(topo *topology) error {
		_, err := nstest.IPErr("-n", topo.P, "link", "del", "wan3")
		return err
	}},
}

// Test 2: for each way of losing wan3, frank's running TCP flow and UDP
// association end within 1 s (outcome interface_lost), his new requests
// get 0x03 within 500 ms each, alice's transfer is untouched, and once wan3
// is back (up, addresses and metric-300 default routes restored) frank
// works again through the same daemon process.
func TestOpsInterfaceDownUp(t *testing.T) {
	e, _ := getDaemon(t)
	ensureWan3(t, e)
	t.Cleanup(func() { ensureWan3(t, e) })
	C := e.topo.C
	const (
		listen      = "10.231.0.1:1481"
		metricsAddr = "127.0.0.1:9811"
	)
	startPaced(t, e)
	d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsFrank}, metrics: metricsAddr})
	pid := d.pid()
	ifaceUp := func(t *testing.T) float64 {
		t.Helper()
		v, ok := scrape(t, e.topo.P, metricsAddr).Get("ifsocks_interface_up", map[string]string{"interface": "wan3"})
		if !ok {
			t.Fatalf("no ifsocks_interface_up{interface=\"wan3\"} sample")
		}
		return v
	}
	waitIfaceUp := func(t *testing.T, want float64) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); ifaceUp(t) != want; {
			if time.Now().After(deadline) {
				t.Fatalf("ifsocks_interface_up{interface=\"wan3\"} = %v after 3s, want %v", ifaceUp(t), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitIfaceUp(t, 1)

	cycles := 0
	for _, fl := range ifaceFlaps {
		ok := t.Run(fl.name, func(t *testing.T) {
			t.Cleanup(func() { ensureWan3(t, e) })
			// frank works, from wan3, in both families and over UDP.
			if got, err := whoamiTry(C, listen, opsFrank, svcV4+":8080"); err != nil || got != wan3V4 {
				t.Fatalf("frank before: whoami saw %q (%v), want %s", got, err, wan3V4)
			}
			if got, err := whoamiTry(C, listen, opsFrank, "["+svcV6+"]:8080"); err != nil || got != wan3V6 {
				t.Fatalf("frank over IPv6 before: whoami saw %q (%v), want %s", got, err, wan3V6)
			}
			frank := startDownload(t, C, listen, opsFrank, 16<<20, 31, 256<<10) // 64 s unless cut
			alice := startDownload(t, C, listen, opsAlice, 3<<19, 32, 256<<10)  // 6 s, across the outage
			assoc := udpAssociate(t, C, udpOpts{proxy: listen, user: opsFrank.Name, pass: opsFrank.Password})
			if _, seen, err := assoc.echo(echoV4.String(), udpToken("wan3-before")); err != nil || seen.Addr().String() != wan3V4 {
				t.Fatalf("frank UDP before: echo seen from %v (%v), want %s", seen, err, wan3V4)
			}
			frank.waitGot(t, 64<<10, 10*time.Second)
			alice.waitGot(t, 64<<10, 10*time.Second)

			// Lose wan3.
			mark := d.mark()
			lost := time.Now() // so the bounds below include running ip(8)
			if err := fl.lose(e.topo); err != nil {
				t.Fatal(err)
			}
			frank.wait(t, 3*time.Second)
			t.Logf("frank's TCP flow ended %v after wan3 was lost", frank.ended.Sub(lost))
			if took := frank.ended.Sub(lost); took > time.Second {
				t.Errorf("frank's TCP flow ended %v after wan3 was lost, want < 1s", took)
			}
			if frank.err == nil || frank.body >= frank.want {
				t.Errorf("frank's download: %d of %d bytes, err %v; want it cut short", frank.body, frank.want, frank.err)
			}
			_ = assoc.res.conn.SetReadDeadline(lost.Add(3 * time.Second))
			_, err := assoc.res.conn.Read(make([]byte, 1))
			if took := time.Since(lost); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) || took > time.Second {
				t.Errorf("frank's UDP control connection: read %v after %v, want EOF within 1s", err, took)
			}
			flow := d.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["client"] == frank.client })
			wantFields(t, flow, map[string]any{
				"level": "warn", "user": "frank", "interface": "wan3", "outcome": "interface_lost",
				"reply": float64(0), "error": "egress interface went down or away", "bytes_up": float64(frank.reqLen),
			})
			aline := d.waitAssoc(t, 3*time.Second, assoc.client())
			wantFields(t, aline, map[string]any{"level": "warn", "user": "frank", "interface": "wan3", "outcome": "interface_lost"})
			changes := d.waitStates(t, mark, "wan3", fl.state)
			for _, c := range changes {
				t.Logf("watcher: wan3 %v -> %v", c["from"], c["to"])
			}
			if changes[0]["from"] != "up" {
				t.Errorf("first wan3 state change after the loss: %v, want one from \"up\"", changes[0])
			}
			cut := d.waitLineSince(t, mark, "closed the flows of a lost egress interface")
			wantFields(t, cut, map[string]any{"level": "warn", "interface": "wan3", "flows": float64(2)})

			// New flows of frank: 0x03 at once, whatever the target.
			for _, target := range []string{svcV4 + ":8080", "[" + svcV6 + "]:8080", "whoami.test:8080"} {
				start := time.Now()
				res := socksAs(t, C, listen, opsFrank, target)
				took := time.Since(start)
				t.Logf("frank to %s: reply %d, closed %v, after %v", target, res.reply, res.closed, took)
				if res.authStatus != 0 || res.reply != 3 || !res.closed {
					t.Errorf("frank to %s while wan3 is lost: auth %d reply %d closed %v, want 0, 0x03, closed", target, res.authStatus, res.reply, res.closed)
				}
				// closedByPeer waited for the close, so this bounds reply+close.
				if took > 500*time.Millisecond {
					t.Errorf("frank to %s while wan3 is lost: refused after %v, want < 500ms", target, took)
				}
			}
			start := time.Now()
			ua, err := udpAssociateRaw(C, udpOpts{proxy: listen, user: opsFrank.Name, pass: opsFrank.Password})
			if err != nil {
				t.Fatal(err)
			}
			ua.close()
			if took := time.Since(start); ua.res.reply != 3 || took > 500*time.Millisecond {
				t.Errorf("frank's UDP ASSOCIATE while wan3 is lost: reply %d after %v, want 0x03 within 500ms", ua.res.reply, took)
			}
			if v := ifaceUp(t); v != 0 {
				t.Errorf("ifsocks_interface_up{interface=\"wan3\"} = %v while lost, want 0", v)
			}
			// alice is not affected.
			if got, err := whoamiTry(C, listen, opsAlice, svcV4+":8080"); err != nil || got != wan1V4 {
				t.Errorf("alice while wan3 is lost: whoami saw %q (%v), want %s", got, err, wan1V4)
			}

			// Bring wan3 back: up, addresses and default routes restored.
			mark = d.mark()
			ensureWan3(t, e)
			d.waitStates(t, mark, "wan3", "up")
			waitIfaceUp(t, 1)
			// The first request may race the kernel's neighbour setup;
			// give it a short, bounded chance, then it must be solid.
			var got string
			for deadline := time.Now().Add(3 * time.Second); ; {
				if got, err = whoamiTry(C, listen, opsFrank, svcV4+":8080"); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil || got != wan3V4 {
				t.Fatalf("frank after wan3 is back: whoami saw %q (%v), want %s", got, err, wan3V4)
			}
			if got, err := whoamiTry(C, listen, opsFrank, "["+svcV6+"]:8080"); err != nil || got != wan3V6 {
				t.Errorf("frank over IPv6 after wan3 is back: whoami saw %q (%v), want %s", got, err, wan3V6)
			}
			assoc2 := udpAssociate(t, C, udpOpts{proxy: listen, user: opsFrank.Name, pass: opsFrank.Password})
			if _, seen, err := assoc2.echo(echoV6.String(), udpToken("wan3-after")); err != nil || seen.Addr().String() != wan3V6 {
				t.Errorf("frank UDP after: echo seen from %v (%v), want %s", seen, err, wan3V6)
			}
			assoc2.close()

			alice.wait(t, 20*time.Second)
			alice.wantIntact(t)
			aflow := d.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["client"] == alice.client })
			wantFields(t, aflow, map[string]any{"user": "alice", "interface": "wan1", "outcome": "ok"})
			if d.pid() != pid || !d.running() {
				t.Errorf("daemon pid %d running %v, want the same process %d running", d.pid(), d.running(), pid)
			}
		})
		if !ok {
			break // wan3 may be in an unknown state; later cycles would only add noise
		}
		cycles++
	}
	if cycles != len(ifaceFlaps) {
		return
	}
	// Per cycle: frank's TCP flow and association were cut; 3 CONNECTs
	// and 1 ASSOCIATE were refused.
	pm := scrape(t, e.topo.P, metricsAddr)
	wantMetric(t, pm, "ifsocks_flows_total", map[string]string{"protocol": "socks5", "user": "frank", "interface": "wan3", "outcome": "interface_lost"}, float64(2*cycles))
	wantMetric(t, pm, "ifsocks_flows_total", map[string]string{"protocol": "socks5", "user": "frank", "interface": "wan3", "outcome": "unreachable"}, float64(4*cycles))
	wantMetric(t, pm, "ifsocks_active_flows", map[string]string{"user": "frank", "interface": "wan3"}, 0)
	wantMetric(t, pm, "ifsocks_interface_up", map[string]string{"interface": "wan1"}, 1)
}
