//go:build linux

package test

import (
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Regression tests for daemon bugs found while writing the operations
// tests (all fixed): flows on an interface a reload stopped watching were
// not cut, cutting a half-closed flow left it blocked on its upstream, and
// a reload that respelled an unchanged listen address failed.

// rawSource listens on svcV4:port in U. Each accepted connection gets
// 4 KiB every 20 ms until it fails (talk) or nothing at all (silent);
// nothing is ever read and the server never closes first. Unlike the
// HTTP servers, it does not react to the client's half-close.
func rawSource(t *testing.T, e *env, port int, talk bool) {
	t.Helper()
	l, err := nstest.ListenIn(e.topo.U, "tcp", net.JoinHostPort(svcV4, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if !talk {
				continue
			}
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// halfClosed connects as u to svcV4:port, sends nothing and half-closes
// (as `nc -N` or a client done with its request does); a goroutine reads
// until the end. It returns our address and a channel closed at EOF.
func halfClosed(t *testing.T, ns, proxy string, u nstest.User, port int) (string, <-chan struct{}) {
	t.Helper()
	res := socksAs(t, ns, proxy, u, net.JoinHostPort(svcV4, strconv.Itoa(port)))
	if res.authStatus != 0 || res.reply != 0 {
		t.Fatalf("%s: auth %d reply %d", u.Name, res.authStatus, res.reply)
	}
	if err := res.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, res.conn); close(done) }()
	return res.localAddr, done
}

// Bug 1: the watcher follows only the interfaces of the users in the
// current configuration. A reload that removes a user (flows continue by
// default) or moves them to another interface stops watching the old
// interface, so when it goes down the flows still using it are not cut:
// they stall until the idle timeout (5 min here).
func TestOpsRegressionUnwatchedAfterReload(t *testing.T) {
	e, _ := getDaemon(t)
	ensureWan3(t, e)
	t.Cleanup(func() { ensureWan3(t, e) })
	C := e.topo.C
	const listen = "10.231.0.1:1781"
	startPaced(t, e)
	for _, tc := range []struct {
		name  string
		users []nstest.User
	}{
		{"user-removed", []nstest.User{opsAlice}},
		{"user-moved", []nstest.User{opsAlice, {Name: "frank", Password: opsFrank.Password, Interface: "wan2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { ensureWan3(t, e) })
			d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsFrank}})
			frank := startDownload(t, C, listen, opsFrank, 16<<20, 1, 256<<10)
			frank.waitGot(t, 64<<10, 5*time.Second)
			d.writeConfig(t, opsConfig{listen: []string{listen}, users: tc.users}.render(t))
			d.mustReload(t)
			frank.waitGot(t, 128<<10, 5*time.Second) // runs on, as it should
			lost := time.Now()
			if _, err := nstest.IPErr("-n", e.topo.P, "link", "set", "wan3", "down"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-frank.done:
				if took := frank.ended.Sub(lost); took > time.Second {
					t.Errorf("frank's flow ended %v after wan3 went down, want < 1s", took)
				}
				flow := d.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["client"] == frank.client })
				wantFields(t, flow, map[string]any{"outcome": "interface_lost"})
			case <-time.After(3 * time.Second):
				t.Errorf("frank's flow on wan3 still open 3s after wan3 went down (%d bytes so far); the watcher no longer follows wan3", frank.got.Load())
			}
		})
	}
}

// Bug 2: cutting a flow (interface lost, user removed, end of the
// shutdown grace period) closes only the client's socket. A relay whose
// client has already half-closed is then blocked reading the upstream
// socket, which nobody closes: if the upstream is silent (or unreachable,
// its interface being down) the flow never ends: no flow line, the
// active-flows gauge stays up, goroutines and the upstream socket leak
// until idle_timeout, and SIGTERM does not stop the daemon.
func TestOpsRegressionCutHalfClosed(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C

	t.Run("interface-lost", func(t *testing.T) {
		ensureWan3(t, e)
		t.Cleanup(func() { ensureWan3(t, e) })
		const listen = "10.231.0.1:1782"
		rawSource(t, e, 8082, true)
		d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsFrank}})
		client, done := halfClosed(t, C, listen, opsFrank, 8082)
		time.Sleep(300 * time.Millisecond)
		if _, err := nstest.IPErr("-n", e.topo.P, "link", "set", "wan3", "down"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done: // the client's socket is closed at once ...
		case <-time.After(2 * time.Second):
			t.Errorf("client still connected 2s after wan3 went down")
		}
		// ... but the flow must end too.
		flow := d.waitFlow(t, 2*time.Second, func(m map[string]any) bool { return m["client"] == client })
		wantFields(t, flow, map[string]any{"outcome": "interface_lost"})
	})

	t.Run("user-removed", func(t *testing.T) {
		const listen = "10.231.0.1:1783"
		rawSource(t, e, 8083, false)
		d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice, opsErin}, closesRemoved: true})
		client, _ := halfClosed(t, C, listen, opsErin, 8083)
		time.Sleep(300 * time.Millisecond)
		d.writeConfig(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice}, closesRemoved: true}.render(t))
		line := d.mustReload(t)
		wantFields(t, line, map[string]any{"flows_closed": float64(1)})
		flow := d.waitFlow(t, 2*time.Second, func(m map[string]any) bool { return m["client"] == client })
		wantFields(t, flow, map[string]any{"outcome": "user_removed"})
	})

	t.Run("shutdown", func(t *testing.T) {
		const listen = "10.231.0.1:1784"
		rawSource(t, e, 8084, false)
		d := startOpsDaemon(t, opsConfig{listen: []string{listen}, users: []nstest.User{opsAlice}}) // shutdown_timeout 2s
		halfClosed(t, C, listen, opsAlice, 8084)
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-d.done:
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("daemon took %v to stop, want shutdown_timeout (2s) plus little", took)
			}
		case <-time.After(4 * time.Second):
			t.Errorf("daemon still running 4s after SIGTERM with shutdown_timeout = 2s")
		}
	})
}

// Bug 3: listeners are matched by the text of the address, so a reload
// that only writes an unchanged address differently ("[fd31:0::1]" vs
// "[fd31::1]") opens a second socket on the same address before closing
// the first, and fails with "address already in use": the whole reload,
// users included, is refused.
func TestOpsRegressionRespelledListen(t *testing.T) {
	e, _ := getDaemon(t)
	d := startOpsDaemon(t, opsConfig{listen: []string{"10.231.0.1:1785", "[fd31:0::1]:1786"}, users: []nstest.User{opsAlice}})
	d.writeConfig(t, opsConfig{listen: []string{"10.231.0.1:1785", "[fd31::1]:1786"}, users: []nstest.User{opsAlice, opsDave}}.render(t))
	if ok, line := d.reload(t); !ok {
		t.Fatalf("reload failed: %v", line["error"])
	}
	if got := whoamiVia(t, e.topo.C, "[fd31::1]:1786", opsDave, svcV4+":8080"); got != wan2V4 {
		t.Errorf("dave: whoami saw %s, want %s", got, wan2V4)
	}
	// A specific address becoming the wildcard on the same port cannot be
	// opened next to the old socket; the reload frees the port first.
	d.writeConfig(t, opsConfig{listen: []string{"0.0.0.0:1785", "[fd31::1]:1786"}, users: []nstest.User{opsAlice, opsDave}}.render(t))
	if ok, line := d.reload(t); !ok {
		t.Fatalf("reload to the wildcard failed: %v", line["error"])
	}
	if got := whoamiVia(t, e.topo.C, "10.231.0.1:1785", opsDave, svcV4+":8080"); got != wan2V4 {
		t.Errorf("dave via the wildcard listener: whoami saw %s, want %s", got, wan2V4)
	}
}
