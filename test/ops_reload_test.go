//go:build linux

package test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// SIGHUP reload: users, passwords and listeners change for new connections;
// flows in progress go on; a bad file changes nothing.

// Test 1a: a transfer of more than 10 s keeps going, intact, across a
// valid reload that removes its user and a broken one; after the valid one
// the added user works and the removed one is refused, and the broken ones
// change nothing.
func TestOpsReloadLive(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C
	const listen = "10.231.0.1:1181"
	startPaced(t, e)
	base := opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsErin}}
	d := startOpsDaemon(t, base)
	pid := d.pid()

	wantAuthRefused(t, C, listen, opsDave) // not yet configured
	if got := whoamiVia(t, C, listen, opsErin, svcV4+":8080"); got != wan2V4 {
		t.Fatalf("erin before the reload: whoami saw %s, want %s", got, wan2V4)
	}

	// 3 MiB at 256 KiB/s: 12 s, crossing the proxy all along.
	const size, rate = 3 << 20, 256 << 10
	dl := startDownload(t, C, listen, opsErin, size, 99, rate)
	dl.waitGot(t, 256<<10, 10*time.Second)

	// (a) Valid: dave added, erin removed, alice gets a new password and
	// leaves by wan2 from now on.
	d.writeConfig(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAliceNew, opsDave}}.render(t))
	before := dl.got.Load()
	reloadA := time.Now()
	line := d.mustReload(t)
	wantFields(t, line, map[string]any{
		"level": "info", "users": float64(2), "users_removed": float64(1), "flows_closed": float64(0),
		"listeners_added": float64(0), "listeners_removed": float64(0),
	})
	// dave works at once (the first attempt, no retry), from his NIC.
	if got := whoamiVia(t, C, listen, opsDave, svcV4+":8080"); got != wan2V4 {
		t.Errorf("dave right after the reload: whoami saw %s, want %s", got, wan2V4)
	}
	if got := whoamiVia(t, C, listen, opsDave, "["+svcV6+"]:8080"); got != wan2V6 {
		t.Errorf("dave over IPv6: whoami saw %s, want %s", got, wan2V6)
	}
	wantAuthRefused(t, C, listen, opsErin)
	wantAuthRefused(t, C, listen, opsAlice) // her old password
	if got := whoamiVia(t, C, listen, opsAliceNew, svcV4+":8080"); got != wan2V4 {
		t.Errorf("alice after the reload: whoami saw %s, want %s (her new interface)", got, wan2V4)
	}
	// erin's running transfer goes on: more bytes arrive after the reload.
	dl.waitGot(t, before+256<<10, 5*time.Second)

	// (b) Broken: an unknown key. The file would also bring erin back and
	// drop dave; nothing of it may take effect.
	bad := opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsErin},
		serverExtra: "bogus_key = true\n"}
	d.writeConfig(t, bad.render(t))
	before = dl.got.Load()
	ok, line := d.reload(t)
	if ok {
		t.Fatalf("reload of a file with an unknown key succeeded: %v", line)
	}
	if msg, _ := line["error"].(string); line["level"] != "error" || !strings.Contains(msg, "server.bogus_key") || !strings.Contains(msg, "unknown key") {
		t.Errorf("failed reload line: level %v error %q, want level error and an error naming unknown key server.bogus_key", line["level"], msg)
	}
	wantAuthRefused(t, C, listen, opsErin)
	wantAuthRefused(t, C, listen, opsAlice)
	if got := whoamiVia(t, C, listen, opsAliceNew, svcV4+":8080"); got != wan2V4 {
		t.Errorf("alice after the failed reload: whoami saw %s, want %s", got, wan2V4)
	}
	if got := whoamiVia(t, C, listen, opsDave, svcV4+":8080"); got != wan2V4 {
		t.Errorf("dave after the failed reload: whoami saw %s, want %s", got, wan2V4)
	}
	dl.waitGot(t, before+128<<10, 5*time.Second)

	// (c) Broken: a bad value. The error names key and value.
	bad = opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsErin},
		serverExtra: "reload_closes_removed = true\n"}
	d.writeConfig(t, strings.Replace(bad.render(t), `connect_timeout = "5s"`, `connect_timeout = "soon"`, 1))
	before = dl.got.Load()
	ok, line = d.reload(t)
	if ok {
		t.Fatalf("reload of a file with connect_timeout = \"soon\" succeeded: %v", line)
	}
	if msg, _ := line["error"].(string); !strings.Contains(msg, `server.connect_timeout: "soon"`) {
		t.Errorf("failed reload error %q, want it to name server.connect_timeout and \"soon\"", msg)
	}
	reloadC := time.Now()
	wantAuthRefused(t, C, listen, opsErin)
	if got := whoamiVia(t, C, listen, opsDave, svcV4+":8080"); got != wan2V4 {
		t.Errorf("dave after the second failed reload: whoami saw %s, want %s", got, wan2V4)
	}
	dl.waitGot(t, before+128<<10, 5*time.Second)

	// The transfer ends intact, after every reload, having lasted >= 10 s.
	dl.wait(t, 40*time.Second)
	dl.wantIntact(t)
	if !dl.start.Before(reloadA) || !dl.ended.After(reloadC) || dl.ended.Sub(dl.start) < 10*time.Second {
		t.Errorf("transfer %v..%v (%v), reloads at %v..%v: want it to span them and last >= 10s",
			dl.start.Format(time.StampMilli), dl.ended.Format(time.StampMilli), dl.ended.Sub(dl.start),
			reloadA.Format(time.StampMilli), reloadC.Format(time.StampMilli))
	}
	flow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == dl.client })
	wantFields(t, flow, map[string]any{
		"user": "erin", "interface": "wan2", "outcome": "ok", "reply": float64(0),
		"bytes_up": float64(dl.reqLen), "bytes_down": float64(dl.raw),
	})
	if n := d.countMsg(msgReloaded); n != 1 {
		t.Errorf("%d %q lines, want 1", n, msgReloaded)
	}
	if n := d.countMsg(msgReloadFailed); n != 2 {
		t.Errorf("%d %q lines, want 2", n, msgReloadFailed)
	}
	if d.pid() != pid || !d.running() {
		t.Errorf("daemon pid %d running %v, want the same process %d still running", d.pid(), d.running(), pid)
	}
}

// Test 1b: listeners follow the file: an added address accepts, a removed
// one refuses, and an unchanged one accepts every connection across the
// reloads. A reload that cannot open a new address changes nothing.
func TestOpsReloadListeners(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C
	const (
		keep  = "10.231.0.1:1281"
		add4  = "10.231.0.1:1282"
		add6  = "[fd31::1]:1283"
		taken = "10.231.0.1:1284"
	)
	one := opsConfig{listen: []string{keep}, users: []nstest.User{opsAlice}}
	three := opsConfig{listen: []string{keep, add4, add6}, users: []nstest.User{opsAlice}}
	d := startOpsDaemon(t, one)

	// Hammer the unchanged listener with complete SOCKS exchanges from two
	// clients for the whole test.
	ctx, cancel := context.WithCancel(context.Background())
	var okN, failN atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				res, err := socksDo(rctx, C, socksRequest{proxy: keep, user: opsAlice.Name, pass: opsAlice.Password, target: svcV4 + ":8080"})
				rcancel()
				if res.conn != nil {
					res.conn.Close()
				}
				if ctx.Err() != nil {
					return
				}
				if err == nil && (res.authStatus != 0 || res.reply != 0) {
					err = errors.New("auth status/reply not 0")
				}
				if err != nil {
					failN.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				okN.Add(1)
				time.Sleep(time.Millisecond) // steady, not a flood
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })

	refused := func(addr string) {
		t.Helper()
		c, err := nstest.Dialer{NS: C, Timeout: 2 * time.Second}.Dial("tcp", addr)
		if err == nil {
			c.Close()
			t.Errorf("%s accepted a connection, want it refused (listener removed)", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial %s: %v, want connection refused", addr, err)
		}
	}
	refused(add4)
	refused(add6)
	time.Sleep(200 * time.Millisecond) // hammer running before the first reload
	const cycles = 10
	for i := range cycles {
		d.writeConfig(t, three.render(t))
		line := d.mustReload(t)
		wantFields(t, line, map[string]any{"listeners_added": float64(2), "listeners_removed": float64(0)})
		for _, addr := range []string{add4, add6} {
			if got := whoamiVia(t, C, addr, opsAlice, svcV4+":8080"); got != wan1V4 {
				t.Errorf("cycle %d: via added %s whoami saw %s, want %s", i, addr, got, wan1V4)
			}
		}
		d.writeConfig(t, one.render(t))
		line = d.mustReload(t)
		wantFields(t, line, map[string]any{"listeners_added": float64(0), "listeners_removed": float64(2)})
		refused(add4)
		refused(add6)
	}
	stopped := 0
	for _, m := range d.logEntries() {
		if m["msg"] == "stopped listening" && (m["addr"] == add4 || m["addr"] == add6) {
			stopped++
		}
	}
	if stopped != 2*cycles {
		t.Errorf("%d \"stopped listening\" lines for the removed addresses, want %d", stopped, 2*cycles)
	}

	// A reload that cannot listen where told fails as a whole: dave, in
	// the same file, does not appear, and the running listeners stay.
	blocker, err := nstest.ListenIn(e.topo.P, "tcp4", taken)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	d.writeConfig(t, opsConfig{listen: []string{keep, taken}, users: []nstest.User{opsAlice, opsDave}}.render(t))
	ok, line := d.reload(t)
	if ok {
		t.Fatalf("reload with %s already in use succeeded: %v", taken, line)
	}
	if msg, _ := line["error"].(string); !strings.Contains(msg, taken) || !strings.Contains(msg, "address already in use") {
		t.Errorf("failed reload error %q, want it to name %s and \"address already in use\"", msg, taken)
	}
	wantAuthRefused(t, C, keep, opsDave)

	// Let the hammer run a little after the last reload, then judge it.
	time.Sleep(200 * time.Millisecond)
	cancel()
	wg.Wait()
	if failN.Load() != 0 || okN.Load() < 100 {
		t.Errorf("unchanged listener %s across %d reloads: %d ok, %d failed (first: %v); want >= 100 ok and 0 failed",
			keep, 2*cycles+1, okN.Load(), failN.Load(), firstErr)
	}
	t.Logf("unchanged listener: %d SOCKS exchanges ok, %d failed, across %d reloads", okN.Load(), failN.Load(), 2*cycles+1)
}

// Test 1c: with reload_closes_removed = true, a reload that removes erin
// cuts her running flow at once (outcome user_removed); alice's transfer
// running alongside is untouched.
func TestOpsReloadClosesRemoved(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C
	const listen = "10.231.0.1:1381"
	startPaced(t, e)
	d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsErin}, closesRemoved: true})

	const rate = 256 << 10
	erin := startDownload(t, C, listen, opsErin, 16<<20, 5, rate)  // 64 s: never finishes by itself
	alice := startDownload(t, C, listen, opsAlice, 2<<20, 6, rate) // 8 s
	erin.waitGot(t, 128<<10, 10*time.Second)
	alice.waitGot(t, 128<<10, 10*time.Second)

	d.writeConfig(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice}, closesRemoved: true}.render(t))
	sent := time.Now()
	line := d.mustReload(t)
	wantFields(t, line, map[string]any{"users_removed": float64(1), "flows_closed": float64(1)})
	erin.wait(t, 2*time.Second)
	if took := erin.ended.Sub(sent); took > time.Second {
		t.Errorf("erin's flow ended %v after SIGHUP, want < 1s", took)
	}
	if erin.err == nil || erin.body >= erin.want {
		t.Errorf("erin's download: %d of %d bytes, err %v; want it cut short", erin.body, erin.want, erin.err)
	}
	flow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == erin.client })
	wantFields(t, flow, map[string]any{
		"level": "warn", "user": "erin", "interface": "wan2", "outcome": "user_removed", "reply": float64(0),
		"bytes_up": float64(erin.reqLen), "error": "user removed by configuration reload",
	})
	if down, _ := flow["bytes_down"].(float64); int64(down) < erin.raw {
		t.Errorf("erin's flow bytes_down %v, want >= the %d bytes she received", flow["bytes_down"], erin.raw)
	}
	wantAuthRefused(t, C, listen, opsErin)

	alice.wait(t, 30*time.Second)
	alice.wantIntact(t)
	aflow := d.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["client"] == alice.client })
	wantFields(t, aflow, map[string]any{"user": "alice", "outcome": "ok", "bytes_down": float64(alice.raw)})
}
