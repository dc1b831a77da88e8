//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Egress address pools (source_ips, source_rotation): what the upstream
// sees, per connection, per UDP association, per user and per session, and
// a prefix the host has no local route for.
func TestPools(t *testing.T) {
	topo := newPoolTopology(t)
	wan2 := `interface = "wan2"`
	body := poolUserBlock(poolFlow, fmt.Sprintf("source_ips = [%q]\n%s", poolPrefix, wan2)) +
		poolUserBlock(poolV4, "source_ips = "+tomlList(poolSecondaries)) +
		poolUserBlock(poolAnn, fmt.Sprintf("source_ips = [%q]\nsource_rotation = \"user\"\n%s", poolPrefix, wan2)) +
		poolUserBlock(poolBen, fmt.Sprintf("source_ips = [%q]\nsource_rotation = \"user\"\n%s", poolPrefix, wan2)) +
		poolUserBlock(poolSess, fmt.Sprintf("source_ips = [%q]\nsource_rotation = \"session\"\n%s", poolPrefix, wan2)) +
		poolUserBlock(poolX, "") +
		poolUserBlock(poolNone, fmt.Sprintf("source_ips = [%q]\n%s", poolNoRoute, wan2))
	cfg := poolConfig(body)
	od := startPoolDaemon(t, topo, cfg)
	target6 := net.JoinHostPort(poolSvc6, poolWebPort)
	target4 := net.JoinHostPort(poolSvc4, poolWebPort)
	prefix := netip.MustParsePrefix(poolPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	t.Run("flow over a prefix, 1000 connections", func(t *testing.T) {
		start := time.Now()
		seen := fetchMany(t, ctx, topo, poolFlow, target6, 1000)
		distinct := map[netip.Addr]bool{}
		for _, s := range seen {
			a, dev := seenAddr(t, s)
			if !prefix.Contains(a) || a == prefix.Addr() || dev != poolArriveOn {
				t.Fatalf("upstream saw %q: want an address of %s (not its anycast) arriving on %s", s, prefix, poolArriveOn)
			}
			distinct[a] = true
		}
		t.Logf("1000 connections in %v: %d distinct source addresses", time.Since(start).Round(time.Millisecond), len(distinct))
		if len(distinct) < 990 {
			t.Errorf("%d distinct addresses in 1000 connections, want >= 990", len(distinct))
		}
		// Each flow's line is written when the proxy sees its end,
		// which may come after the client has read everything.
		lines := poolFlows(od, poolFlow.Name)
		for deadline := time.Now().Add(5 * time.Second); len(lines) < 1000 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			lines = poolFlows(od, poolFlow.Name)
		}
		if len(lines) < 1000 {
			t.Fatalf("%d flow lines, want 1000", len(lines))
		}
		for _, l := range lines[:20] {
			local, err := netip.ParseAddrPort(fmt.Sprint(l["local"]))
			if err != nil || !prefix.Contains(local.Addr()) || l["rotation"] != "flow" || l["interface"] != "wan2" {
				t.Errorf("flow line %s: want local in %s, rotation flow, interface wan2", jsonLine(l), prefix)
			}
		}
	})

	t.Run("flow over a prefix, 100 UDP associations", func(t *testing.T) {
		replies := pythonUDPMany(t, topo, poolFlow, poolSvc6, poolUDPPort, 100)
		distinct := map[netip.Addr]bool{}
		for _, r := range replies {
			seen, _, _ := strings.Cut(r, "|")
			a, dev := seenAddr(t, seen)
			if !prefix.Contains(a) || dev != poolArriveOn {
				t.Fatalf("upstream saw %q: want an address of %s arriving on %s", r, prefix, poolArriveOn)
			}
			distinct[a] = true
		}
		if len(replies) != 100 || len(distinct) < 99 {
			t.Errorf("%d replies from %d distinct addresses, want 100 from >= 99", len(replies), len(distinct))
		}
	})

	t.Run("flow over 4 IPv4 addresses, 2000 connections", func(t *testing.T) {
		seen := fetchMany(t, ctx, topo, poolV4, target4, 2000)
		counts := map[string]int{}
		for _, s := range seen {
			a, dev := seenAddr(t, s)
			if dev != poolArriveOn {
				t.Fatalf("upstream saw %q: want arrival on %s", s, poolArriveOn)
			}
			counts[a.String()]++
		}
		t.Logf("counts %v", counts)
		if len(counts) != len(poolSecondaries) {
			t.Fatalf("addresses used %v, want exactly %v", counts, poolSecondaries)
		}
		for _, a := range poolSecondaries {
			if n := counts[a]; n < 400 || n > 600 {
				t.Errorf("%s used %d times of 2000, want 500 +- 20%%", a, n)
			}
		}
	})

	var annAddr netip.Addr
	t.Run("user rotation", func(t *testing.T) {
		annAddr = sameAddress(t, ctx, topo, poolAnn.Name, poolAnn.Password, target6, 50)
		benAddr := sameAddress(t, ctx, topo, poolBen.Name, poolBen.Password, target6, 5)
		if annAddr == benAddr {
			t.Errorf("ann and ben share %s", annAddr)
		}
		if !prefix.Contains(annAddr) || !prefix.Contains(benAddr) {
			t.Errorf("addresses %s, %s outside %s", annAddr, benAddr, prefix)
		}
	})

	t.Run("session rotation", func(t *testing.T) {
		a := sameAddress(t, ctx, topo, "alice-session-a", poolSess.Password, target6, 2)
		b := sameAddress(t, ctx, topo, "alice-session-b", poolSess.Password, target6, 2)
		if a == b {
			t.Errorf("sessions a and b share %s", a)
		}
		// Plain alice: flow behaviour.
		p1, p2 := fetchAddr(t, ctx, topo, poolSess.Name, poolSess.Password, target6), fetchAddr(t, ctx, topo, poolSess.Name, poolSess.Password, target6)
		if p1 == p2 || p1 == a {
			t.Errorf("alice without a session got %s then %s (session a: %s), want rotation per flow", p1, p2, a)
		}
		// The wrong password with a session suffix is refused.
		res, err := socksDo(ctx, topo.C, socksRequest{proxy: poolListen, user: "alice-session-a", pass: "wrong-Pw", target: target6})
		if err == nil && res.conn != nil {
			res.conn.Close()
		}
		if res.authStatus == 0 {
			t.Errorf("wrong password with a session suffix: auth status 0, err %v; want refused", err)
		}
		// Flow lines name alice, the rotation and a hash of the key,
		// never the key or the full login name.
		od.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["user"] == poolSess.Name && m["session"] != nil })
		var found bool
		for _, l := range poolFlows(od, poolSess.Name) {
			if l["session"] == nil {
				continue
			}
			found = true
			if l["rotation"] != "session" || strings.Contains(jsonLine(l), "session-a") {
				t.Errorf("session flow line %s: want rotation session and no key", jsonLine(l))
			}
		}
		if !found {
			t.Error("no flow line of alice with a session hash")
		}
		// A user without session rotation whose name has the separator
		// is that user.
		x := fetchAddr(t, ctx, topo, poolX.Name, poolX.Password, target4)
		if !x.Is4() {
			t.Errorf("x-session-y left from %s, want the kernel's IPv4 choice", x)
		}
		line := od.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["user"] == poolX.Name })
		if line["session"] != nil || line["rotation"] != nil {
			t.Errorf("x-session-y flow line %s: want no session nor rotation", jsonLine(line))
		}
	})

	// The HTTP proxy on the same port: the same plan, the same split of
	// session names (curl, forwarded requests and CONNECT).
	t.Run("HTTP proxy sessions", func(t *testing.T) {
		viaCurl := func(login string, connect bool) netip.Addr {
			t.Helper()
			args := []string{"netns", "exec", topo.C, "curl", "-sS", "-g", "--max-time", "10",
				"-x", "http://" + login + ":" + poolSess.Password + "@" + poolListen}
			if connect {
				args = append(args, "-p")
			}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			defer ccancel()
			out, stderr, err := nstest.Run(cctx, nil, "ip", append(args, "http://"+target6+"/")...)
			if err != nil {
				t.Fatalf("curl as %s (CONNECT %v): %v %s", login, connect, err, stderr)
			}
			a, dev := seenAddr(t, strings.TrimSpace(out))
			if !prefix.Contains(a) || dev != poolArriveOn {
				t.Fatalf("curl as %s: upstream saw %q", login, out)
			}
			return a
		}
		socksA := fetchAddr(t, ctx, topo, "alice-session-a", poolSess.Password, target6)
		for _, connect := range []bool{false, true} {
			if a := viaCurl("alice-session-a", connect); a != socksA {
				t.Errorf("HTTP (CONNECT %v) session a left from %s, SOCKS from %s", connect, a, socksA)
			}
			if c := viaCurl("alice-session-c", connect); c == socksA {
				t.Errorf("HTTP (CONNECT %v) sessions a and c share %s", connect, c)
			}
		}
		line := od.waitFlow(t, 3*time.Second, func(m map[string]any) bool {
			return m["protocol"] == "http" && m["user"] == poolSess.Name && m["session"] != nil
		})
		if line["rotation"] != "session" {
			t.Errorf("HTTP flow line %s: want rotation session", jsonLine(line))
		}
	})

	// BIND listens on a pool address (bound with FREEBIND on wan2); a
	// peer in U reaches it through the routed prefix.
	t.Run("BIND on a pool address", func(t *testing.T) {
		res, err := socksDo(ctx, topo.C, socksRequest{proxy: poolListen, user: poolFlow.Name, pass: poolFlow.Password, target: "[::]:0", cmd: 2})
		if err != nil || res.reply != 0 {
			t.Fatalf("BIND: reply %d err %v", res.reply, err)
		}
		defer res.conn.Close()
		if !prefix.Contains(res.bound.Addr()) || res.bound.Port() == 0 {
			t.Fatalf("BND %v, want an address of %s with a port", res.bound, prefix)
		}
		var peer net.Conn
		if err := nstest.Enter(topo.U, func() error {
			var err error
			peer, err = net.DialTimeout("tcp", res.bound.String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatalf("peer to %v: %v", res.bound, err)
		}
		defer peer.Close()
		_ = res.conn.SetDeadline(time.Now().Add(10 * time.Second))
		second := make([]byte, 22) // VER REP RSV ATYP(4) ADDR(16) PORT
		if _, err := io.ReadFull(res.conn, second); err != nil || second[1] != 0 {
			t.Fatalf("second BIND reply %x: %v", second, err)
		}
		if _, err := peer.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(res.conn, got); err != nil || string(got) != "ping" {
			t.Fatalf("relayed %q, %v", got, err)
		}
	})

	t.Run("prefix without a local route", func(t *testing.T) {
		res, err := socksDo(ctx, topo.C, socksRequest{proxy: poolListen, user: poolNone.Name, pass: poolNone.Password, target: target6})
		if res.conn != nil {
			res.conn.Close()
		}
		if err != nil || res.authStatus != 0 || res.reply != 3 {
			t.Fatalf("auth %d reply %d err %v, want reply 0x03", res.authStatus, res.reply, err)
		}
		// Matched on the user too: after thousands of connections the
		// client's port may be one an earlier flow of another user had.
		line := od.waitFlow(t, 3*time.Second, func(m map[string]any) bool {
			return m["client"] == res.localAddr && m["user"] == poolNone.Name
		})
		if e := fmt.Sprint(line["error"]); !strings.Contains(e, "no local route") || !strings.Contains(e, poolNoRoute) {
			t.Errorf("flow error %q: want it to name %s and the missing local route", e, poolNoRoute)
		}
		// Warned about at start, naming the entry.
		if m := od.lastMsg("source_ips entry has no local route; its flows will fail with 0x03 until one is added (ip route add local PREFIX dev lo)"); m == nil || m["entry"] != poolNoRoute || m["user"] != poolNone.Name {
			t.Errorf("start-up warning about %s: %v", poolNoRoute, m)
		}
		// The host's state, which may change (a route added later), as
		// for a source_ip not on the host: info, unreachable.
		if line["outcome"] != "unreachable" || line["level"] != "info" {
			t.Errorf("flow line %s: want level info, outcome unreachable", jsonLine(line))
		}
	})

	t.Run("check", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		out, _, err := nstest.Run(cctx, nil, "ip", "netns", "exec", topo.P, od.bin, "-check", "-config", od.cfgPath)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("-check: %v, want a non-zero exit for the prefix without a local route\n%s", err, out)
		}
		for _, want := range []string{poolNoRoute, "no local route", poolPrefix + " on wan2: local route", "4 IPv4 addresses on wan2"} {
			if !strings.Contains(out, want) {
				t.Errorf("-check output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("user mapping survives a restart", func(t *testing.T) {
		if !annAddr.IsValid() {
			t.Skip("user rotation failed")
		}
		od.stopClean(t)
		startPoolDaemon(t, topo, cfg)
		if got := fetchAddr(t, ctx, topo, poolAnn.Name, poolAnn.Password, target6); got != annAddr {
			t.Errorf("ann after a restart: %s, before %s", got, annAddr)
		}
	})
}

// fetchAddr is one fetch; it returns the source address the upstream saw.
func fetchAddr(t *testing.T, ctx context.Context, topo *topology, name, pass, target string) netip.Addr {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	s, err := poolFetch(cctx, topo, name, pass, target)
	if err != nil {
		t.Fatalf("as %s to %s: %v", name, target, err)
	}
	a, _ := seenAddr(t, s)
	return a
}

// sameAddress makes n connections and checks they all left from one
// address, which it returns.
func sameAddress(t *testing.T, ctx context.Context, topo *topology, name, pass, target string, n int) netip.Addr {
	t.Helper()
	first := fetchAddr(t, ctx, topo, name, pass, target)
	for range n - 1 {
		if a := fetchAddr(t, ctx, topo, name, pass, target); a != first {
			t.Fatalf("%s: %s then %s, want one address", name, first, a)
		}
	}
	return first
}

// tomlList renders strings as a TOML array.
func tomlList(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
