//go:build linux

package test

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"
)

// UDP ASSOCIATE: egress per user, the association log line, and the reply
// filter. Refusals are in udpfail_test.go, load and leaks in udpload_test.go.

var (
	echoV4 = netip.AddrPortFrom(netip.MustParseAddr(svcV4), udpEchoPort)
	echoV6 = netip.AddrPortFrom(netip.MustParseAddr(svcV6), udpEchoPort)
)

// udpToken returns a payload no other datagram of this run carries, so the
// echo server's record can say whether it ever arrived.
func udpToken(label string) string { return fmt.Sprintf("%s-%d", label, nameSeq.Add(1)) }

// waitAssoc waits (bounded) for the "udp association" line of the
// association whose control connection came from client.
func (d *daemon) waitAssoc(tb testing.TB, limit time.Duration, client string) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, m := range d.logEntries() {
			if m["msg"] == "udp association" && m["client"] == client {
				return m
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no \"udp association\" line for client %s within %v; log tail:\n%s", client, limit, tail(d.logs.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantLogFields checks exact field values of a log line.
func wantLogFields(tb testing.TB, line map[string]any, want map[string]any) {
	tb.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if line[k] != want[k] {
			tb.Errorf("association %s = %#v, want %#v", k, line[k], want[k])
		}
	}
}

// wantDropped checks the "dropped" object exactly: the listed reasons with
// these counts and no other reason.
func wantDropped(tb testing.TB, line map[string]any, want map[string]int) {
	tb.Helper()
	got, ok := line["dropped"].(map[string]any)
	if !ok {
		tb.Errorf("association dropped = %#v, want an object", line["dropped"])
		return
	}
	wantAny := make(map[string]any, len(want))
	for k, v := range want {
		wantAny[k] = float64(v)
	}
	if !maps.Equal(got, wantAny) {
		tb.Errorf("association dropped = %v, want exactly %v", got, wantAny)
	}
}

// wantEchoFrom checks one echo: the reply header names the echo server
// (ATYP by its family), and the echo server saw the datagram come from
// one of the addresses in from.
func wantEchoFrom(tb testing.TB, r udpReply, seen netip.AddrPort, server netip.AddrPort, from ...string) {
	tb.Helper()
	wantAtyp := byte(1)
	if server.Addr().Is6() {
		wantAtyp = 4
	}
	if r.atyp != wantAtyp || r.src != server {
		tb.Errorf("reply header ATYP %d source %s, want ATYP %d source %s", r.atyp, r.src, wantAtyp, server)
	}
	if !slices.Contains(from, seen.Addr().String()) || seen.Port() == 0 {
		tb.Errorf("echo server saw the datagram from %s, want one of %q", seen, from)
	}
}

// Test 1 with python3-socks: IPv4, IPv6 and domain targets per user; the
// echo server names the egress address, the DNS server the lookup source.
func TestUDPEgressPython(t *testing.T) {
	e, _ := getDaemon(t)
	for _, u := range []egressUser{alice, bob} {
		t.Run(u.name, func(t *testing.T) {
			name := freshName("udp-py-" + u.name)
			mark := e.dns.mark()
			port := strconv.Itoa(udpEchoPort)
			targets := []struct{ host, tok string }{
				{svcV4, udpToken("py4")}, {svcV6, udpToken("py6")},
				{name, udpToken("pyname")}, {"v4only.test", udpToken("pyv4only")},
			}
			var args []string
			for _, tg := range targets {
				args = append(args, tg.host+"|"+port+"|"+tg.tok)
			}
			res, stderr, exit := pythonUDP(t, e.topo.C, u.name, u.pass, args...)
			if exit != 0 {
				t.Fatalf("python3-socks UDP: exit %d, stderr %q", exit, stderr)
			}
			outPorts := map[string]uint16{} // family -> outbound source port
			for i, r := range res {
				seen, payload, err := parseEcho([]byte(r.Data))
				if err != nil || payload != targets[i].tok {
					t.Errorf("%s: echo %q (%v), want payload %q", targets[i].host, r.Data, err, targets[i].tok)
					continue
				}
				if r.Attempts != 1 {
					t.Logf("%s: echo needed %d sends", targets[i].host, r.Attempts)
				}
				// Egress by target: IPv4 literal and the A-only name leave by
				// the NIC's IPv4 address; a dual-stack name by either family,
				// and then the header must name the matching server address.
				wantFrom := []string{u.v4}
				switch targets[i].host {
				case svcV6:
					wantFrom = []string{u.v6}
				case name:
					wantFrom = []string{u.v4, u.v6}
				}
				if !slices.Contains(wantFrom, seen.Addr().String()) {
					t.Errorf("%s: echo server saw %s, want from %q", targets[i].host, seen, wantFrom)
				}
				fam := "4"
				if seen.Addr().Is6() {
					fam = "6"
				}
				if want := map[string]string{"4": svcV4, "6": svcV6}[fam]; r.FromHost != want || r.FromPort != udpEchoPort {
					t.Errorf("%s: reply header source %s:%d, want %s:%d", targets[i].host, r.FromHost, r.FromPort, want, udpEchoPort)
				}
				// One outbound socket per family: one source port per family.
				if p, ok := outPorts[fam]; ok && p != seen.Port() {
					t.Errorf("IPv%s datagrams left from ports %d and %d, want one socket per family", fam, p, seen.Port())
				}
				outPorts[fam] = seen.Port()
			}
			wantDNSFrom(t, e, mark, name, u)
			wantDNSFrom(t, e, mark, "v4only.test", u)
		})
	}
}

// Test 1 with the Go client: both listeners, both target families, and a
// domain; the IPv6 reply header is checked byte for byte.
func TestUDPEgressGo(t *testing.T) {
	e, _ := getDaemon(t)
	for _, u := range []egressUser{alice, bob} {
		for _, proxy := range []string{proxyListen4, proxyListen6} {
			t.Run(u.name+"/"+proxy, func(t *testing.T) {
				a := udpAssociate(t, e.topo.C, udpOpts{proxy: proxy, user: u.name, pass: u.pass})
				wantRelay := netip.MustParseAddr(proxyV4)
				if proxy == proxyListen6 {
					wantRelay = netip.MustParseAddr("fd31::1")
				}
				if a.relay.Addr() != wantRelay || a.relay.Port() == 0 {
					t.Fatalf("BND %s, want %s:<port>", a.relay, wantRelay)
				}
				r, seen, err := a.echo(echoV6.String(), udpToken("go6"))
				if err != nil {
					t.Fatal(err)
				}
				wantEchoFrom(t, r, seen, echoV6, u.v6)
				hdr := append([]byte{0, 0, 0, 4}, echoV6.Addr().AsSlice()...)
				hdr = append(hdr, byte(udpEchoPort>>8), byte(udpEchoPort&0xff))
				if string(r.raw[:len(hdr)]) != string(hdr) {
					t.Errorf("IPv6 reply header % x, want % x", r.raw[:len(hdr)], hdr)
				}
				r, seen, err = a.echo(echoV4.String(), udpToken("go4"))
				if err != nil {
					t.Fatal(err)
				}
				wantEchoFrom(t, r, seen, echoV4, u.v4)

				name := freshName("udp-go-" + u.name)
				mark := e.dns.mark()
				r, seen, err = a.echo(net.JoinHostPort(name, strconv.Itoa(udpEchoPort)), udpToken("goname"))
				if err != nil {
					t.Fatal(err)
				}
				server, nic := echoV4, u.v4
				if seen.Addr().Is6() {
					server, nic = echoV6, u.v6
				}
				wantEchoFrom(t, r, seen, server, nic)
				wantDNSFrom(t, e, mark, name, u)
			})
		}
	}
}

// Test 5: the association's log line carries exact values: user, client,
// interface, relay, the outbound sources learnt from the echo replies, and
// the datagram and byte counts of what was sent and received.
func TestUDPAssociationLog(t *testing.T) {
	e, d := getDaemon(t)
	a := udpAssociate(t, e.topo.C, udpOpts{user: alice.name, pass: alice.pass})
	var upBytes, downBytes, n int
	var src [2]netip.AddrPort
	for i, dst := range []netip.AddrPort{echoV4, echoV6, echoV4, echoV6, echoV4} {
		payload := udpToken(fmt.Sprintf("log%d", i)) + string(make([]byte, 10*i))
		r, seen, err := a.echo(dst.String(), payload)
		if err != nil {
			t.Fatal(err)
		}
		fam := family(dst)
		if src[fam].IsValid() && src[fam] != seen {
			t.Errorf("IPv%d datagrams left from %s and %s, want one socket per family", 4+2*fam, src[fam], seen)
		}
		src[fam] = seen
		upBytes += len(payload)
		downBytes += len(r.payload)
		n++
	}
	a.close()
	line := d.waitAssoc(t, 5*time.Second, a.client())
	wantLogFields(t, line, map[string]any{
		"user":        "alice",
		"client":      a.client(),
		"interface":   "wan1",
		"relay":       a.relay.String(),
		"local":       src[0].String() + "," + src[1].String(),
		"dgrams_up":   float64(n),
		"bytes_up":    float64(upBytes),
		"dgrams_down": float64(n),
		"bytes_down":  float64(downBytes),
		"outcome":     "ok",
	})
	if src[0].Addr().String() != wan1V4 || src[1].Addr().String() != wan1V6 {
		t.Errorf("echo server saw sources %s and %s, want %s and %s", src[0], src[1], wan1V4, wan1V6)
	}
	wantDropped(t, line, nil)
	if s, _ := line["duration"].(string); s == "" {
		t.Errorf("association duration = %#v, want a non-empty string", line["duration"])
	}
	if t.Failed() {
		t.Logf("association line: %v", line)
	}
}

func family(ap netip.AddrPort) int {
	if ap.Addr().Is4() {
		return 0
	}
	return 1
}

// Test 4: a datagram to the association's outbound port from an address
// and port the client never sent to is not relayed (default filter
// "address-port"), though it reached the daemon (counted as unsolicited).
func TestUDPUnsolicited(t *testing.T) {
	e, d := getDaemon(t)
	a := udpAssociate(t, e.topo.C, udpOpts{user: alice.name, pass: alice.pass})
	for _, server := range []netip.AddrPort{echoV4, echoV6} {
		_, seen, err := a.echo(server.String(), udpToken("before"))
		if err != nil {
			t.Fatal(err)
		}
		// Same address as the echo server, another port: only the port differs.
		if err := e.udp.sendProbe(seen, []byte(udpToken("unsolicited"))); err != nil {
			t.Fatal(err)
		}
		if r, err := a.recv(time.Second); err != errNoDatagram {
			t.Errorf("after an unsolicited datagram to %s the client got %q (%v), want nothing", seen, r.raw, err)
		}
		// The association still works, and the next datagram is the echo.
		if _, _, err := a.echo(server.String(), udpToken("after")); err != nil {
			t.Error(err)
		}
	}
	a.close()
	line := d.waitAssoc(t, 5*time.Second, a.client())
	wantDropped(t, line, map[string]int{"unsolicited": 2})
	wantLogFields(t, line, map[string]any{"dgrams_up": float64(4), "dgrams_down": float64(4)})
}
