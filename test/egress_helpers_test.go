//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Helpers of the egress tests (egress_*_test.go): a topology of their own
// per test, in which the upstream can tell both the source address and the
// NIC a connection arrived on, daemons started from configuration text, and
// a SOCKS fetch that returns what the upstream saw.
//
//	C (client)                P (proxy, the daemon)         U (upstream)
//	c0 10.233.0.2, .200 ----- cl0 10.233.0.1
//	c1 10.233.1.50 ------------------------------ uc1 -+
//	                          wan1 10.233.1.1 --- up1 -+- br1 10.233.1.2
//	c2 10.233.2.50 ------------------------------ uc2 -+
//	                          wan2 10.233.2.1 --- up2 -+- br2 10.233.2.2
//	                               10.233.2.22 (secondary)
//	                                              lo 10.233.9.9-24
//
// P has two default routes, wan1 preferred (metric 100, wan2 200): a flow
// that is not steered leaves by wan1. U answers on br1 and br2 with strict
// reverse-path filtering, and its HTTP server has one socket bound to each
// bridge (SO_BINDTODEVICE), so its answer "SRC DEV" names the NIC the
// connection came in by as well as its source address. C sits on both
// bridges too (c1, c2): it reaches P on wan1's and on wan2's address for
// the ingress tests, but has no route to U's service addresses, so only
// the proxy can fetch them.

const (
	egPrefix = "ifse-"

	egClient     = "10.233.0.2"   // C c0, inside allow_clients
	egStranger   = "10.233.0.200" // C c0, outside allow_clients
	egProxy      = "10.233.0.1"   // P cl0
	egWan1       = "10.233.1.1"   // P wan1
	egWan2       = "10.233.2.1"   // P wan2
	egWan2Second = "10.233.2.22"  // P wan2, secondary address
	egGw1        = "10.233.1.2"   // U br1
	egGw2        = "10.233.2.2"   // U br2
	egSvc        = "10.233.9.9"   // U lo, the first service address
	egSvcCount   = 16             // 10.233.9.9 .. 10.233.9.24
	egWebPort    = "8080"
	egMetrics    = "127.0.0.1:9813"

	// What the upstream answers for a flow from each NIC.
	seenWan1 = egWan1 + " br1"
	seenWan2 = egWan2 + " br2"
)

// egSvcAddr is the i-th service address of U (0 is egSvc).
func egSvcAddr(i int) string { return fmt.Sprintf("10.233.9.%d", 9+i) }

// egTarget is the whoami endpoint of egSvc.
var egTarget = net.JoinHostPort(egSvc, egWebPort)

// newEgressTopology builds the topology above for one test and removes it
// (killing what still runs inside) at the end of the test.
func newEgressTopology(t *testing.T) *topology {
	t.Helper()
	return newEgressTopologyAs(t, egPrefix)
}

// newEgressTopologyAs is newEgressTopology with namespace names that start
// with prefix, for tests whose names must carry their own.
func newEgressTopologyAs(t *testing.T, prefix string) *topology {
	t.Helper()
	nt := nstest.NewTopology(t, nstest.TopologyConfig{Prefix: strings.TrimSuffix(prefix, "-"), Net: 233, ClientOnWANs: true})
	// What the harness's topology lacks: a client address outside
	// allow_clients, a second address on wan2, more service addresses.
	if err := nt.C.AddAddr("c0", egStranger+"/24"); err != nil {
		t.Fatal(err)
	}
	if err := nt.P.AddAddr("wan2", egWan2Second+"/24"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < egSvcCount; i++ {
		if err := nt.U.AddAddr("lo", egSvcAddr(i)+"/32"); err != nil {
			t.Fatal(err)
		}
	}
	return &topology{C: nt.C.Name, P: nt.P.Name, U: nt.U.Name}
}

// restoreWan brings wan1 or wan2 back as a network manager would after an
// administrative down: up, with its default route. Idempotent.
func restoreWan(topo *topology, wan string) error {
	gw, metric := egGw1, "100"
	if wan == "wan2" {
		gw, metric = egGw2, "200"
	}
	if _, err := nstest.IPErr("-n", topo.P, "link", "set", wan, "up"); err != nil {
		return err
	}
	_, err := nstest.IPErr("-n", topo.P, "route", "replace", "default", "via", gw, "dev", wan, "metric", metric)
	return err
}

// ---------------------------------------------------------------------
// The upstream web server.

// startEgressWhoami serves on port 8080 of every address of U, with one
// socket bound to br1 and one to br2. GET / answers "SRC DEV" (the peer's
// address and the bridge its connection came in by) as text; GET /page the
// same inside an HTML page, for the browser.
func startEgressWhoami(t *testing.T, topo *topology) {
	t.Helper()
	for _, dev := range []string{"br1", "br2"} {
		var l net.Listener
		err := nstest.Enter(topo.U, func() error {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), dev) }); err != nil {
					return err
				}
				return serr
			}}
			var err error
			l, err = lc.Listen(context.Background(), "tcp4", "0.0.0.0:"+egWebPort)
			return err
		})
		if err != nil {
			t.Fatalf("whoami on %s: %v", dev, err)
		}
		seen := func(r *http.Request) string {
			ap, err := netip.ParseAddrPort(r.RemoteAddr)
			if err != nil {
				return "unparsable " + r.RemoteAddr
			}
			return ap.Addr().Unmap().String() + " " + dev
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, seen(r))
		})
		mux.HandleFunc("GET /page", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, "<!DOCTYPE html><html><head><title>whoami</title></head><body><p id=\"seen\">%s</p></body></html>\n", seen(r))
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close(); <-done })
	}
}

// ---------------------------------------------------------------------
// Daemons.

// egressPasswords are the passwords the egress tests configure; none may
// appear in a daemon's log.
var egressPasswords = []string{"fo-Pw-91a3", "rr-Pw-2c77", "hh-Pw-0d4e", "ingrid-Pw-6b10", "sid-Pw-44f2", "nos-Pw-13e8", "mika-Pw-7a05", "kern-Pw-e3c9"}

// Users of the egress daemons; each password is one of egressPasswords.
var (
	egFo     = nstest.User{Name: "fo", Password: "fo-Pw-91a3"}
	egRR     = nstest.User{Name: "rr", Password: "rr-Pw-2c77"}
	egHash   = nstest.User{Name: "hh", Password: "hh-Pw-0d4e"}
	egIngrid = nstest.User{Name: "ingrid", Password: "ingrid-Pw-6b10"}
	egSid    = nstest.User{Name: "sid", Password: "sid-Pw-44f2"}
	egNos    = nstest.User{Name: "nos", Password: "nos-Pw-13e8"}
	egMika   = nstest.User{Name: "mika", Password: "mika-Pw-7a05"}
	egKern   = nstest.User{Name: "kern", Password: "kern-Pw-e3c9"}
	egAnon   = nstest.User{} // no authentication
)

// egressConfig renders a daemon configuration: [server] with listen (none
// when nil: only the [[listeners]] of body) and short timeouts, a debug
// JSON log, metrics on egMetrics in P, then body ([[users]], [[listeners]]).
func egressConfig(listen []string, body string) string {
	return must(nstest.Config{Listen: listen, Server: []string{`connect_timeout = "3s"`}, Metrics: egMetrics, Extra: body}.Text())
}

// must is text of a configuration that cannot fail to render (no hashed
// users).
func must(text string, err error) string {
	if err != nil {
		panic(err)
	}
	return text
}

// startEgressDaemon runs the package's ifsocks binary in topo's P with the
// configuration text cfg (see egressConfig) and returns once every address in ready accepts
// connections from C. It is stopped with SIGTERM (which must suffice) at
// the end of the test.
func startEgressDaemon(t *testing.T, topo *topology, cfg string, ready ...string) *opsDaemon {
	t.Helper()
	od := spawnDaemon(t, topo, "egress", cfg, nil, func(od *opsDaemon) {
		for _, line := range strings.Split(od.logs.String(), "\n") {
			for _, p := range egressPasswords {
				if strings.Contains(line, p) {
					t.Errorf("egress daemon log contains a password: %s", line)
				}
			}
		}
	})
	start := time.Now()
	if err := od.waitListening(ready, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon listening after %v", time.Since(start).Round(time.Millisecond))
	return od
}

// userBlock renders a [[users]] entry with the given egress lines.
func userBlock(u nstest.User, egress string) string {
	return must(nstest.User{Name: u.Name, Password: u.Password, Egress: egress}.Text()) + "\n"
}

// ---------------------------------------------------------------------
// Clients.

// fetched is one whoami request through the proxy.
type fetched struct {
	seen   string // the upstream's answer: "SRC DEV"
	client string // our end of the SOCKS connection, as the flow log has it
	bound  netip.AddrPort
}

// egFetch asks whoami at target through the SOCKS server at proxy, from
// namespace ns, as u (egAnon: method "no authentication"). Errors are
// returned, not reported, so it can run on any goroutine.
func egFetch(ns, proxy string, u nstest.User, target string) (fetched, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := socksRequest{proxy: proxy, user: u.Name, pass: u.Password, target: target}
	if u == egAnon {
		req.methods = []byte{methodNoAuth}
	}
	res, err := socksDo(ctx, ns, req)
	f := fetched{client: res.localAddr, bound: res.bound}
	if err != nil {
		return f, err
	}
	if res.authStatus > 0 || res.reply != 0 {
		return f, fmt.Errorf("method %#x auth status %d reply %d, want success", res.method, res.authStatus, res.reply)
	}
	defer res.conn.Close()
	_ = res.conn.SetDeadline(time.Now().Add(10 * time.Second))
	host, _, _ := net.SplitHostPort(target)
	if _, err := fmt.Fprintf(res.conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", host); err != nil {
		return f, err
	}
	resp, err := io.ReadAll(res.conn)
	if err != nil {
		return f, fmt.Errorf("reading whoami: %w", err)
	}
	head, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	status, _, _ := strings.Cut(head, "\r\n")
	if !ok || !strings.Contains(status, " 200 ") {
		return f, fmt.Errorf("whoami answered %q", status)
	}
	f.seen = strings.TrimSpace(body)
	return f, nil
}

// mustFetch is egFetch that fails the test on error.
func mustFetch(t *testing.T, ns, proxy string, u nstest.User, target string) fetched {
	t.Helper()
	f, err := egFetch(ns, proxy, u, target)
	if err != nil {
		t.Fatalf("%q via %s to %s: %v", u.Name, proxy, target, err)
	}
	return f
}

// wantSeen fetches and checks what the upstream saw; it returns the flow's
// log line.
func wantSeen(t *testing.T, od *opsDaemon, ns, proxy string, u nstest.User, target, want string) map[string]any {
	t.Helper()
	f := mustFetch(t, ns, proxy, u, target)
	if f.seen != want {
		t.Errorf("%q via %s to %s: upstream saw %q, want %q", u.Name, proxy, target, f.seen, want)
	}
	return od.flowOf(t, f.client)
}

// flowOf waits (bounded) for the flow line of the SOCKS connection whose
// client end is client.
func (od *opsDaemon) flowOf(t *testing.T, client string) map[string]any {
	t.Helper()
	return od.waitFlow(t, 3*time.Second, func(m map[string]any) bool { return m["client"] == client })
}

// skippedOf returns the "skipped" field of a flow line (nil if absent).
func skippedOf(line map[string]any) []string {
	raw, _ := line["skipped"].([]any)
	var out []string
	for _, v := range raw {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

// dialFromIn connects from local (an address of ns) to remote.
func dialFromIn(ns, local, remote string) (net.Conn, error) {
	var c net.Conn
	err := nstest.Enter(ns, func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		var err error
		c, err = d.Dial("tcp", remote)
		return err
	})
	return c, err
}

// greetFrom sends a SOCKS5 greeting offering "no authentication" from
// local and returns what the server sent back before closing or within 3
// s, and how the read ended.
func greetFrom(ns, local, proxy string) ([]byte, error) {
	c, err := dialFromIn(ns, local, proxy)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	// The server may have closed already: a failed write is part of
	// the answer, the read below tells the rest.
	_, _ = c.Write([]byte{5, 1, methodNoAuth})
	var got []byte
	buf := make([]byte, 16)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
		if len(got) >= 2 {
			return got, nil
		}
	}
}

// closedWithoutReply reports whether greetFrom's result is a connection
// the server ended without sending a byte.
func closedWithoutReply(got []byte, err error) bool {
	return len(got) == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

// socksAsEg performs greeting, authentication and CONNECT as u and
// returns the raw result; a connection left open is closed at the end of
// the test.
func socksAsEg(t *testing.T, ns, proxy string, u nstest.User, target string) socksResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := socksRequest{proxy: proxy, user: u.Name, pass: u.Password, target: target}
	if u == egAnon {
		req.methods = []byte{methodNoAuth}
	}
	res, err := socksDo(ctx, ns, req)
	if err != nil {
		t.Fatalf("SOCKS as %q via %s to %s: %v (so far %+v)", u.Name, proxy, target, err, res)
	}
	if res.conn != nil {
		t.Cleanup(func() { res.conn.Close() })
	}
	return res
}
