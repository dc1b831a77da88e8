//go:build linux

package test

import (
	"crypto/sha256"
	"fmt"
	"github.com/ifsocks/ifsocks/internal/nstest"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// Metrics: after a known set of flows, datagrams, failures and reloads,
// every series has exactly the value the traffic implies, and agrees with
// the flow log.

// Test 3.
func TestOpsMetrics(t *testing.T) {
	e, _ := getDaemon(t)
	C, P := e.topo.C, e.topo.P
	const (
		listen      = "10.231.0.1:1581"
		metricsAddr = "127.0.0.1:9810"
	)
	cfg := opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsCarol}, metrics: metricsAddr}
	started := time.Now()
	d := startOpsDaemon(t, cfg)

	// /healthz
	code, body, err := nsHTTP(P, "http://"+metricsAddr+"/healthz")
	if err != nil || code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz: %d %q %v, want 200 \"ok\"", code, body, err)
	}

	// Before any traffic: the reload series exist at 0, the last good
	// load is the start, and the watched interfaces are known.
	var pm promMetrics
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		pm = scrape(t, P, metricsAddr)
		if v, _ := pm.Get("ifsocks_interface_up", map[string]string{"interface": "wan1"}); v == 1 || time.Now().After(deadline) {
			break
		}
	}
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "success"}, 0)
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "failure"}, 0)
	wantIfaceSet(t, pm, map[string]float64{"wan1": 1, "nosuch0": 0})
	if v, _ := pm.Get("ifsocks_config_last_reload_success_timestamp_seconds", map[string]string{}); v < unixSeconds(started) || v > unixSeconds(time.Now()) {
		t.Errorf("last reload success timestamp %f before any reload, want the start time (%f..%f)", v, unixSeconds(started), unixSeconds(time.Now()))
	}
	for _, name := range []string{"ifsocks_flows_total", "ifsocks_bytes_total", "ifsocks_auth_failures_total", "ifsocks_udp_datagrams_total"} {
		if s := pm.Series(name); len(s) != 0 {
			t.Errorf("%s before any traffic: %v, want no series", name, s)
		}
	}

	// Flows of alice whose every byte we know: we write the request and
	// read the response to the server's close.
	var upTCP, downTCP int64
	var clients []string
	exchange := func(req []byte) []byte {
		t.Helper()
		res := socksAs(t, C, listen, opsAlice, svcV4+":8080")
		if res.authStatus != 0 || res.reply != 0 {
			t.Fatalf("alice: auth %d reply %d", res.authStatus, res.reply)
		}
		_ = res.conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := res.conn.Write(req); err != nil {
			t.Fatal(err)
		}
		resp, err := io.ReadAll(res.conn)
		res.conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		upTCP += int64(len(req))
		downTCP += int64(len(resp))
		clients = append(clients, res.localAddr)
		return resp
	}
	// Upload: N bytes to /sink.
	const upN, upSeed = 300_000, 17
	var up strings.Builder
	fmt.Fprintf(&up, "POST /sink HTTP/1.0\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", svcV4, upN)
	_, _ = io.CopyN(&up, seededStream(upSeed), upN)
	resp := exchange([]byte(up.String()))
	if want := fmt.Sprintf("%s %d\n", expectedSHA256(upSeed, upN), upN); !strings.HasSuffix(string(resp), "\r\n\r\n"+want) {
		t.Errorf("upload: response %q, want body %q", truncate(resp), want)
	}
	// Download: M bytes from /bytes.
	const downM, downSeed = 500_000, 18
	resp = exchange(fmt.Appendf(nil, "GET /bytes?n=%d&seed=%d HTTP/1.0\r\nHost: %s\r\n\r\n", downM, downSeed, svcV4))
	if _, b, _ := strings.Cut(string(resp), "\r\n\r\n"); len(b) != downM || fmt.Sprintf("%x", sha256.Sum256([]byte(b))) != expectedSHA256(downSeed, downM) {
		t.Errorf("download: body of %d bytes, want %d intact", len(b), downM)
	}

	// A flow held open shows in ifsocks_active_flows, and leaves it.
	held := socksAs(t, C, listen, opsAlice, svcV4+":8080")
	if held.reply != 0 {
		t.Fatalf("alice: reply %d", held.reply)
	}
	// (The gauge moves just after the reply is sent: allow a moment.)
	activeLabels := map[string]string{"user": "alice", "interface": "wan1"}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if v, _ := scrape(t, P, metricsAddr).Get("ifsocks_active_flows", activeLabels); v == 1 {
			break
		}
	}
	wantMetric(t, scrape(t, P, metricsAddr), "ifsocks_active_flows", activeLabels, 1)
	held.conn.Close()
	clients = append(clients, held.localAddr)

	// Refusals: policy (0x02) and carol's missing interface (0x03), and
	// one wrong password.
	if r := socksAs(t, C, listen, opsAlice, "127.0.0.1:8080"); r.reply != 2 {
		t.Errorf("alice to 127.0.0.1: reply %d, want 2", r.reply)
	} else {
		clients = append(clients, r.localAddr)
	}
	if r := socksAs(t, C, listen, opsCarol, svcV4+":8080"); r.reply != 3 {
		t.Errorf("carol: reply %d, want 3", r.reply)
	} else {
		clients = append(clients, r.localAddr)
	}
	wrong := opsAlice
	wrong.Password = wrongPass
	wantAuthRefused(t, C, listen, wrong)

	// UDP: K datagrams of exactly 100 payload bytes, each echoed, plus one
	// fragment, which is dropped.
	const K, dgramSize = 5, 100 // plus one more datagram after the fragment
	a := udpAssociate(t, C, udpOpts{proxy: listen, user: opsAlice.Name, pass: opsAlice.Password})
	var upUDP, downUDP int64
	for i := range K {
		tok := udpToken(fmt.Sprintf("metrics%d", i))
		payload := tok + strings.Repeat(".", dgramSize-len(tok))
		r, _, err := a.echo(echoV4.String(), payload)
		if err != nil {
			t.Fatal(err)
		}
		upUDP += int64(len(payload))
		downUDP += int64(len(r.payload))
	}
	if err := a.sendRaw(udpPacket(echoV4.String(), 1, []byte(udpToken("metrics-frag")))); err != nil {
		t.Fatal(err)
	}
	// The next echo proves the relay has read the fragment.
	r, _, err := a.echo(echoV4.String(), strings.Repeat("x", dgramSize))
	if err != nil {
		t.Fatal(err)
	}
	upUDP += dgramSize
	downUDP += int64(len(r.payload))
	a.close()
	assoc := d.waitAssoc(t, 5*time.Second, a.client())
	wantFields(t, assoc, map[string]any{"user": "alice", "interface": "wan1", "outcome": "ok",
		"dgrams_up": float64(K + 1), "dgrams_down": float64(K + 1),
		"bytes_up": float64(upUDP), "bytes_down": float64(downUDP)})

	// Reloads: one good (adds dave on wan2), one bad (unknown key).
	cfg.users = append(cfg.users, opsDave)
	d.writeConfig(t, cfg.render(t))
	beforeOK := time.Now()
	d.mustReload(t)
	afterOK := time.Now()
	cfg.serverExtra = "no_such_setting = 1\n"
	d.writeConfig(t, cfg.render(t))
	if ok, line := d.reload(t); ok {
		t.Fatalf("reload with an unknown key succeeded: %v", line)
	}

	// Every flow is logged (and so counted) by now.
	var lines []map[string]any
	for _, c := range clients {
		lines = append(lines, d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == c }))
	}
	lines = append(lines, assoc)
	pm = scrape(t, P, metricsAddr)

	// Flow counts by user, interface, outcome: exactly these series, and
	// the same as the log says.
	wantSeries(t, pm, "ifsocks_flows_total", map[string]float64{
		"socks5/alice/wan1/ok":             4, // upload, download, held, UDP association
		"socks5/alice/wan1/denied":         1,
		"socks5/carol/nosuch0/unreachable": 1,
	}, "protocol", "user", "interface", "outcome")
	fromLog := map[string]float64{}
	var logUp, logDown float64
	for _, m := range lines {
		fromLog[fmt.Sprintf("socks5/%v/%v/%v", m["user"], m["interface"], m["outcome"])]++
		if m["user"] == "alice" {
			u, _ := m["bytes_up"].(float64)
			dn, _ := m["bytes_down"].(float64)
			logUp += u
			logDown += dn
		}
	}
	wantSeries(t, pm, "ifsocks_flows_total", fromLog, "protocol", "user", "interface", "outcome")

	// Bytes: TCP at flow end plus UDP per datagram, in one series per
	// direction; equal to what we sent and read, and to the log's sums.
	wantUp, wantDown := float64(upTCP+upUDP), float64(downTCP+downUDP)
	if logUp != wantUp || logDown != wantDown {
		t.Errorf("flow log: alice bytes_up %v bytes_down %v, want %v and %v (what the client sent and read)", logUp, logDown, wantUp, wantDown)
	}
	if wantUp < upN+K*dgramSize || wantDown < downM {
		t.Errorf("counted %v up / %v down, less than the payloads %d / %d", wantUp, wantDown, upN+K*dgramSize, downM)
	}
	wantSeries(t, pm, "ifsocks_bytes_total", map[string]float64{
		"alice/wan1/up":   wantUp,
		"alice/wan1/down": wantDown,
	}, "user", "interface", "direction")
	wantSeries(t, pm, "ifsocks_udp_datagrams_total", map[string]float64{
		"alice/wan1/up":   K + 1,
		"alice/wan1/down": K + 1,
	}, "user", "interface", "direction")
	wantSeries(t, pm, "ifsocks_udp_dropped_total", map[string]float64{"fragmented": 1}, "reason")
	wantSeries(t, pm, "ifsocks_auth_failures_total", map[string]float64{"bad_credentials": 1}, "reason")
	wantSeries(t, pm, "ifsocks_active_flows", map[string]float64{"alice/wan1": 0}, "user", "interface")
	// Dials: three connects of alice, her denied target, carol's refusal.
	wantSeries(t, pm, "ifsocks_dial_duration_seconds_count", map[string]float64{
		"wan1/success":    3,
		"wan1/failure":    1,
		"nosuch0/failure": 1,
	}, "interface", "result")
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "success"}, 1)
	wantMetric(t, pm, "ifsocks_config_reloads_total", map[string]string{"result": "failure"}, 1)
	if v, _ := pm.Get("ifsocks_config_last_reload_success_timestamp_seconds", map[string]string{}); v < unixSeconds(beforeOK) || v > unixSeconds(afterOK) {
		t.Errorf("last reload success timestamp %f, want the good reload's time (%f..%f), unchanged by the bad one",
			v, unixSeconds(beforeOK), unixSeconds(afterOK))
	}
	if testing.Verbose() {
		var b strings.Builder
		for _, smp := range pm {
			if strings.HasPrefix(smp.Name, "ifsocks_") && !strings.Contains(smp.Name, "_bucket") {
				fmt.Fprintf(&b, "\n  %s%v %v", smp.Name, smp.Labels, smp.Value)
			}
		}
		t.Logf("scraped:%s", b.String())
	}
	// The good reload added wan2 to the watched interfaces.
	wantIfaceSet(t, pm, map[string]float64{"wan1": 1, "wan2": 1, "nosuch0": 0})
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// wantIfaceSet checks ifsocks_interface_up exactly: these interfaces with
// these values and no other.
func wantIfaceSet(tb testing.TB, pm promMetrics, want map[string]float64) {
	tb.Helper()
	wantSeries(tb, pm, "ifsocks_interface_up", want, "interface")
}

// wantSeries checks that name has exactly the samples in want, keyed by
// the values of labels joined with "/", and no others.
func wantSeries(tb testing.TB, pm promMetrics, name string, want map[string]float64, labels ...string) {
	tb.Helper()
	got := map[string]float64{}
	for _, s := range pm.Series(name) {
		vals := make([]string, len(labels))
		for i, l := range labels {
			vals[i] = s.Labels[l]
		}
		if len(s.Labels) != len(labels) {
			tb.Errorf("%s sample with labels %v, want exactly %v", name, s.Labels, labels)
		}
		got[strings.Join(vals, "/")] = s.Value
	}
	if !maps.Equal(got, want) {
		keys := slices.Sorted(maps.Keys(got))
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%v", k, got[k])
		}
		tb.Errorf("%s:%s; want %v", name, b.String(), want)
	}
}
