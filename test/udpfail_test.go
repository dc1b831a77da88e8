//go:build linux

package test

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Test 2: what the relay must not pass, and associations it must refuse.
func TestUDPRefusals(t *testing.T) {
	e, d := getDaemon(t)
	C, P := e.topo.C, e.topo.P
	aliceOpts := udpOpts{user: alice.name, pass: alice.pass}

	// notEchoed fails if the echo server ever received token.
	notEchoed := func(t *testing.T, token string) {
		t.Helper()
		if got := e.udp.sawToken(token); len(got) > 0 {
			t.Errorf("echo server received %q from %s, want nothing", got[0].payload, got[0].src)
		}
	}
	// foreignSend sends a well-formed datagram to the relay from a socket
	// in C that did not associate (same IP, other port).
	foreignSend := func(t *testing.T, a *udpAssoc, token string) net.PacketConn {
		t.Helper()
		pc, err := nstest.ListenPacketIn(C, "udp4", net.JoinHostPort(clientV4, "0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		if _, err := pc.WriteTo(udpPacket(echoV4.String(), 0, []byte(token)), net.UDPAddrFromAddrPort(a.relay)); err != nil {
			t.Fatal(err)
		}
		return pc
	}
	echoOK := func(t *testing.T, a *udpAssoc) {
		t.Helper()
		if _, _, err := a.echo(echoV4.String(), udpToken("ok")); err != nil {
			t.Fatal(err)
		}
	}
	// finish ends the association and returns its log line.
	finish := func(t *testing.T, a *udpAssoc) map[string]any {
		t.Helper()
		a.close()
		return d.waitAssoc(t, 5*time.Second, a.client())
	}

	t.Run("foreign-source", func(t *testing.T) {
		a := udpAssociate(t, C, aliceOpts)
		tok := udpToken("foreign")
		pc := foreignSend(t, a, tok)
		echoOK(t, a) // the relay reads in order: the foreign one came first
		_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, _, err := pc.ReadFrom(make([]byte, 2048)); err == nil {
			t.Errorf("foreign socket received a %d-byte datagram", n)
		}
		line := finish(t, a)
		notEchoed(t, tok)
		wantDropped(t, line, map[string]int{"foreign_source": 1})
		wantLogFields(t, line, map[string]any{"dgrams_up": float64(1), "dgrams_down": float64(1)})
	})

	t.Run("foreign-source-port-learnt", func(t *testing.T) {
		// Request port 0: the first datagram fixes the client's port.
		a := udpAssociate(t, C, udpOpts{user: alice.name, pass: alice.pass, portZero: true})
		echoOK(t, a)
		tok := udpToken("foreign0")
		foreignSend(t, a, tok)
		echoOK(t, a)
		line := finish(t, a)
		notEchoed(t, tok)
		wantDropped(t, line, map[string]int{"foreign_source": 1})
		wantLogFields(t, line, map[string]any{"dgrams_up": float64(2), "dgrams_down": float64(2)})
	})

	t.Run("fragmented", func(t *testing.T) {
		a := udpAssociate(t, C, aliceOpts)
		tok := udpToken("frag")
		for _, frag := range []byte{1, 0x81} { // a fragment, and a last fragment
			if err := a.sendRaw(udpPacket(echoV4.String(), frag, []byte(tok))); err != nil {
				t.Fatal(err)
			}
		}
		echoOK(t, a)
		if r, err := a.recv(300 * time.Millisecond); err != errNoDatagram {
			t.Errorf("got an extra datagram %q (%v), want nothing", r.raw, err)
		}
		line := finish(t, a)
		notEchoed(t, tok)
		wantDropped(t, line, map[string]int{"fragmented": 2})
		wantLogFields(t, line, map[string]any{"dgrams_up": float64(1)})
	})

	t.Run("malformed-and-too-large", func(t *testing.T) {
		a := udpAssociate(t, C, aliceOpts)
		tok := udpToken("malformed")
		hdr := udpPacket(echoV4.String(), 0, nil)
		for _, b := range [][]byte{
			append(append([]byte{0, 1}, hdr[2:]...), tok...), // RSV != 0
			{0, 0, 0}, // shorter than any header
			append([]byte{0, 0, 0, 3, 3, 'a', ' ', 'b', 0, 7}, tok...),                // not a hostname
			append([]byte{0, 0, 0, 9, 1, 2, 3, 4, 0, 7}, tok...),                      // unknown ATYP
			append(append(slices.Clone(hdr), tok...), make([]byte, 8193-len(tok))...), // over udp_max_datagram (8192)
		} {
			if err := a.sendRaw(b); err != nil {
				t.Fatal(err)
			}
		}
		echoOK(t, a)
		line := finish(t, a)
		notEchoed(t, tok)
		wantDropped(t, line, map[string]int{"malformed": 4, "too_large": 1})
		wantLogFields(t, line, map[string]any{"dgrams_up": float64(1)})
	})

	t.Run("after-close", func(t *testing.T) {
		a := udpAssociate(t, C, aliceOpts)
		echoOK(t, a)
		a.closeControl()
		// The association must end when its control connection does.
		line := d.waitAssoc(t, 5*time.Second, a.client())
		wantLogFields(t, line, map[string]any{"outcome": "ok", "dgrams_up": float64(1)})
		tok := udpToken("afterclose")
		for _, dst := range []netip.AddrPort{echoV4, echoV6} {
			if err := a.send(dst.String(), []byte(tok)); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := a.recv(time.Second); err != errNoDatagram {
			t.Errorf("after close the client got %q (%v), want nothing", r.raw, err)
		}
		notEchoed(t, tok)
	})

	t.Run("loopback-denied", func(t *testing.T) {
		// Listeners on P's loopback: a relayed datagram would land there.
		var ports []string
		var sinks []net.PacketConn
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
			pc, err := nstest.ListenPacketIn(P, "udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			sinks = append(sinks, pc)
			_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
			ports = append(ports, port)
		}
		a := udpAssociate(t, C, aliceOpts)
		tok := udpToken("loop")
		// loop.test resolves to 127.0.0.1: the policy applies after resolution.
		for _, dst := range []string{"127.0.0.1:" + ports[0], "[::1]:" + ports[1], "loop.test:" + ports[0]} {
			if err := a.send(dst, []byte(tok)); err != nil {
				t.Fatal(err)
			}
		}
		echoOK(t, a)
		for i, pc := range sinks {
			_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, from, err := pc.ReadFrom(make([]byte, 2048)); err == nil {
				t.Errorf("loopback sink %d in P received %d bytes from %s", i, n, from)
			}
		}
		line := finish(t, a)
		wantDropped(t, line, map[string]int{"denied": 3})
		wantLogFields(t, line, map[string]any{"dgrams_up": float64(1)})
	})

	t.Run("wrong-password", func(t *testing.T) {
		a, err := udpAssociateRaw(C, udpOpts{user: alice.name, pass: wrongPass})
		if err != nil {
			t.Fatal(err)
		}
		a.close()
		if a.res.method != methodUserPass || a.res.authStatus != 1 || a.res.reply != -1 || !a.res.closed {
			t.Errorf("method %#x auth status %d reply %d closed %v, want 0x02, 1, no reply, closed",
				a.res.method, a.res.authStatus, a.res.reply, a.res.closed)
		}
		_, stderr, exit := pythonUDP(t, C, alice.name, wrongPass, svcV4+"|7|never")
		if exit != 3 || !strings.Contains(stderr, "SOCKS5AuthError: SOCKS5 authentication failed") {
			t.Errorf("python3-socks with a wrong password: exit %d, stderr %q; want 3 and SOCKS5AuthError", exit, stderr)
		}
	})

	t.Run("carol-missing-interface", func(t *testing.T) {
		a, err := udpAssociateRaw(C, udpOpts{user: "carol", pass: carolPass})
		if err != nil {
			t.Fatal(err)
		}
		a.close()
		if a.res.authStatus != 0 || a.res.reply != 0x03 || !a.res.closed {
			t.Errorf("auth status %d reply %#x closed %v, want 0, 0x03, closed", a.res.authStatus, a.res.reply, a.res.closed)
		}
		flow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == a.client() })
		wantLogFields(t, flow, map[string]any{"user": "carol", "interface": "nosuch0", "reply": float64(3)})
		_, stderr, exit := pythonUDP(t, C, "carol", carolPass, svcV4+"|7|never")
		if exit != 3 || !strings.Contains(stderr, "SOCKS5Error: 0x03: Network unreachable") {
			t.Errorf("python3-socks as carol: exit %d, stderr %q; want 3 and SOCKS5Error 0x03", exit, stderr)
		}
	})

	t.Run("max-associations", func(t *testing.T) {
		const limit = 64 // [server] max_associations default
		var open []*udpAssoc
		defer func() {
			for _, a := range open {
				a.close()
			}
		}()
		try := func() *udpAssoc {
			a, err := udpAssociateRaw(C, aliceOpts)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
		for len(open) < limit {
			a := try()
			// Associations of earlier tests may still be ending.
			for deadline := time.Now().Add(3 * time.Second); a.res.reply == 0x02 && time.Now().Before(deadline); {
				a.close()
				time.Sleep(50 * time.Millisecond)
				a = try()
			}
			open = append(open, a)
			if a.res.reply != 0 {
				t.Fatalf("association %d of %d: reply %#x, want 0x00", len(open), limit, a.res.reply)
			}
		}
		over := try()
		over.close()
		if over.res.reply != 0x02 || !over.res.closed {
			t.Errorf("association %d: reply %#x closed %v, want 0x02 and closed", limit+1, over.res.reply, over.res.closed)
		}
		// Matched on the outcome too: the client's port may be one an
		// earlier flow (another user's) had.
		flow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool {
			return m["client"] == over.client() && m["outcome"] == "limit"
		})
		wantLogFields(t, flow, map[string]any{"user": "alice", "reply": float64(2), "outcome": "limit"})
		// bob has his own limit.
		b := udpAssociate(t, C, udpOpts{user: bob.name, pass: bob.pass})
		b.close()
		// Ending one frees one slot.
		open[0].close()
		d.waitAssoc(t, 5*time.Second, open[0].client())
		var again *udpAssoc
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			again = try()
			open = append(open, again)
			if again.res.reply != 0x02 || time.Now().After(deadline) {
				break
			}
		}
		if again.res.reply != 0 {
			t.Errorf("after one association ended: reply %#x, want 0x00", again.res.reply)
		}
	})
}
