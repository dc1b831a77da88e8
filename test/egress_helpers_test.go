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
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

var (
	egSeq       atomic.Int64
	egStaleOnce sync.Once
)

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
	nstest.RequireRoot(t)
	egStaleOnce.Do(func() {
		removeStaleEgress()
		removeStalePrefix(acctPrefix)
		removeStalePrefix(authPrefix)
	})
	base := fmt.Sprintf("%s%d-%d-", prefix, os.Getpid(), egSeq.Add(1))
	topo := &topology{C: base + "c", P: base + "p", U: base + "u"}
	t.Cleanup(func() {
		start := time.Now()
		defer func() { t.Logf("topology removed in %v", time.Since(start).Round(time.Millisecond)) }()
		if err := topo.destroy(); err != nil {
			t.Errorf("egress topology teardown: %v", err)
		}
	})
	start := time.Now()
	if err := buildEgressTopology(topo); err != nil {
		t.Fatalf("egress topology: %v", err)
	}
	t.Logf("topology %s* built in %v", base, time.Since(start).Round(time.Millisecond))
	return topo
}

func buildEgressTopology(topo *topology) error {
	C, P, U := topo.C, topo.P, topo.U
	for _, ns := range []string{C, P, U} {
		if _, err := nstest.IPErr("netns", "add", ns); err != nil {
			return err
		}
		topo.created = append(topo.created, ns)
	}
	// Set before the links exist, so every new link inherits "default":
	// IPv4 only (no router solicitations or DAD to wait for), no
	// forwarding anywhere (only the daemon bridges C and U), P without
	// reverse-path filtering (replies to a marked flow arrive on wan2
	// while the main table points back via wan1), U strict.
	common := []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.ip_forward=0"}
	for ns, rp := range map[string]string{C: "0", P: "0", U: "1"} {
		if err := nstest.Sysctl(ns, append(common, "net.ipv4.conf.all.rp_filter="+rp, "net.ipv4.conf.default.rp_filter="+rp)...); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"-n", C, "link", "add", "c0", "type", "veth", "peer", "name", "cl0", "netns", P},
		{"-n", C, "link", "add", "c1", "type", "veth", "peer", "name", "uc1", "netns", U},
		{"-n", C, "link", "add", "c2", "type", "veth", "peer", "name", "uc2", "netns", U},
		{"-n", P, "link", "add", "wan1", "type", "veth", "peer", "name", "up1", "netns", U},
		{"-n", P, "link", "add", "wan2", "type", "veth", "peer", "name", "up2", "netns", U},
		{"-n", U, "link", "add", "br1", "type", "bridge"},
		{"-n", U, "link", "add", "br2", "type", "bridge"},
		{"-n", U, "link", "set", "up1", "master", "br1"},
		{"-n", U, "link", "set", "uc1", "master", "br1"},
		{"-n", U, "link", "set", "up2", "master", "br2"},
		{"-n", U, "link", "set", "uc2", "master", "br2"},
		{"-n", C, "addr", "add", egClient + "/24", "dev", "c0"},
		{"-n", C, "addr", "add", egStranger + "/24", "dev", "c0"},
		{"-n", C, "addr", "add", "10.233.1.50/24", "dev", "c1"},
		{"-n", C, "addr", "add", "10.233.2.50/24", "dev", "c2"},
		{"-n", P, "addr", "add", egProxy + "/24", "dev", "cl0"},
		{"-n", P, "addr", "add", egWan1 + "/24", "dev", "wan1"},
		{"-n", P, "addr", "add", egWan2 + "/24", "dev", "wan2"},
		{"-n", P, "addr", "add", egWan2Second + "/24", "dev", "wan2"},
		{"-n", U, "addr", "add", egGw1 + "/24", "dev", "br1"},
		{"-n", U, "addr", "add", egGw2 + "/24", "dev", "br2"},
	}
	for i := range egSvcCount {
		steps = append(steps, []string{"-n", U, "addr", "add", egSvcAddr(i) + "/32", "dev", "lo"})
	}
	for ns, links := range map[string][]string{
		C: {"lo", "c0", "c1", "c2"},
		P: {"lo", "cl0", "wan1", "wan2"},
		U: {"lo", "up1", "uc1", "up2", "uc2", "br1", "br2"},
	} {
		for _, l := range links {
			steps = append(steps, []string{"-n", ns, "link", "set", l, "up"})
		}
	}
	steps = append(steps,
		[]string{"-n", P, "route", "add", "default", "via", egGw1, "dev", "wan1", "metric", "100"},
		[]string{"-n", P, "route", "add", "default", "via", egGw2, "dev", "wan2", "metric", "200"})
	for _, s := range steps {
		if _, err := nstest.IPErr(s...); err != nil {
			return err
		}
	}
	// The bridges exist now; "default" covered the rest.
	if err := nstest.Sysctl(U, "net.ipv4.conf.br1.rp_filter=1", "net.ipv4.conf.br2.rp_filter=1"); err != nil {
		return err
	}
	// The daemon resolves names (a browser asks for some of its own)
	// with a nameserver of our own: U's service address, where nothing
	// answers on port 53, so lookups fail at once and never leave.
	if err := os.MkdirAll(nstest.EtcDir(P), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(nstest.EtcDir(P), "resolv.conf"), []byte("nameserver "+egSvc+"\n"), 0o644)
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

// removeStaleEgress deletes ifse-<pid>-* namespaces and /etc/netns
// directories whose test process is gone (a run killed before its
// cleanups), like removeStale does for the package's own ifst- ones.
func removeStaleEgress() { removeStalePrefix(egPrefix) }

// removeStalePrefix deletes the namespaces and /etc/netns directories
// named prefix<pid>-* whose test process is gone.
func removeStalePrefix(egPrefix string) {
	for _, dir := range []string{"/run/netns", "/etc/netns"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // no such directory: nothing stale
		}
		for _, e := range entries {
			rest, ok := strings.CutPrefix(e.Name(), egPrefix)
			if !ok {
				continue
			}
			pidStr, _, _ := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(pidStr)
			if err != nil || pid <= 0 || pid == os.Getpid() || nstest.PidAlive(pid) {
				continue
			}
			if dir == "/run/netns" {
				err = nstest.DeleteNamed(e.Name())
			} else {
				err = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "warning: removing stale %s/%s: %v\n", dir, e.Name(), err)
			}
		}
	}
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

// egUser is a user of an egress daemon; pass is one of egressPasswords.
type egUser struct{ name, pass string }

var (
	egFo     = egUser{"fo", "fo-Pw-91a3"}
	egRR     = egUser{"rr", "rr-Pw-2c77"}
	egHash   = egUser{"hh", "hh-Pw-0d4e"}
	egIngrid = egUser{"ingrid", "ingrid-Pw-6b10"}
	egSid    = egUser{"sid", "sid-Pw-44f2"}
	egNos    = egUser{"nos", "nos-Pw-13e8"}
	egMika   = egUser{"mika", "mika-Pw-7a05"}
	egKern   = egUser{"kern", "kern-Pw-e3c9"}
	egAnon   = egUser{} // no authentication
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
func userBlock(u egUser, egress string) string {
	return must(nstest.User{Name: u.name, Password: u.pass, Egress: egress}.Text()) + "\n"
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
func egFetch(ns, proxy string, u egUser, target string) (fetched, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := socksRequest{proxy: proxy, user: u.name, pass: u.pass, target: target}
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
func mustFetch(t *testing.T, ns, proxy string, u egUser, target string) fetched {
	t.Helper()
	f, err := egFetch(ns, proxy, u, target)
	if err != nil {
		t.Fatalf("%q via %s to %s: %v", u.name, proxy, target, err)
	}
	return f
}

// wantSeen fetches and checks what the upstream saw; it returns the flow's
// log line.
func wantSeen(t *testing.T, od *opsDaemon, ns, proxy string, u egUser, target, want string) map[string]any {
	t.Helper()
	f := mustFetch(t, ns, proxy, u, target)
	if f.seen != want {
		t.Errorf("%q via %s to %s: upstream saw %q, want %q", u.name, proxy, target, f.seen, want)
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
func socksAsEg(t *testing.T, ns, proxy string, u egUser, target string) socksResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := socksRequest{proxy: proxy, user: u.name, pass: u.pass, target: target}
	if u == egAnon {
		req.methods = []byte{methodNoAuth}
	}
	res, err := socksDo(ctx, ns, req)
	if err != nil {
		t.Fatalf("SOCKS as %q via %s to %s: %v (so far %+v)", u.name, proxy, target, err, res)
	}
	if res.conn != nil {
		t.Cleanup(func() { res.conn.Close() })
	}
	return res
}
