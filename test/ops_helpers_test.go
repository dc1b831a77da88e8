//go:build linux

package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Helpers of the operations tests (ops_*_test.go): daemon instances of
// their own with a configuration file the test rewrites, a paced HTTP
// source in U for transfers that must outlive a reload, the wan3 NIC that
// the interface tests may take down, and a Prometheus text parser.

// ---------------------------------------------------------------------
// Configuration of an ops daemon.

// Users of the ops daemons. Passwords are unique so a leak can be found.
var (
	opsAlice = nstest.User{Name: "alice", Password: alicePass, Interface: "wan1", Hashed: true}
	opsDave  = nstest.User{Name: "dave", Password: "dave-Pw-5b01c3", Interface: "wan2"}
	opsErin  = nstest.User{Name: "erin", Password: "erin-Pw-7d2e90", Interface: "wan2"}
	opsFrank = nstest.User{Name: "frank", Password: "frank-Pw-c4a118", Interface: "wan3"}
	opsCarol = nstest.User{Name: "carol", Password: carolPass, Interface: "nosuch0"}
	// alice after a reload that changes her password and her interface.
	opsAliceNew = nstest.User{Name: "alice", Password: "alice-New-Pw-2f81d0", Interface: "wan2", Hashed: true}
)

var opsPasswords = []string{alicePass, carolPass, wrongPass, opsDave.Password, opsErin.Password, opsFrank.Password, opsAliceNew.Password}

type opsConfig struct {
	listen        []string
	users         []nstest.User
	metrics       string // [metrics] listen; "" = none
	closesRemoved bool   // [server] reload_closes_removed
	serverExtra   string // raw lines appended to [server] (e.g. a bad key)
}

func (c opsConfig) render(tb testing.TB) string {
	tb.Helper()
	var server []string
	if c.closesRemoved {
		server = append(server, "reload_closes_removed = true")
	}
	if c.serverExtra != "" {
		server = append(server, c.serverExtra)
	}
	return nstest.Config{Listen: c.listen, Server: server, Metrics: c.metrics, Users: c.users}.Render(tb)
}

// ---------------------------------------------------------------------
// Daemon instances of one test.

// opsDaemon is a daemon started by one test, with its own configuration
// file, listeners and log. It is stopped (SIGTERM, which must suffice) at
// the end of the test.
type opsDaemon struct {
	*daemon
	cfgPath string
	topo    *topology
}

// startOpsDaemon starts the package's ifsocks binary in P with cfg. extraEnv
// is added to the environment (NOTIFY_SOCKET). It returns once every listen
// address accepts from C.
func startOpsDaemon(t *testing.T, cfg opsConfig, extraEnv ...string) *opsDaemon {
	t.Helper()
	od := launchOpsDaemon(t, cfg, extraEnv...)
	if err := od.waitListening(cfg.listen, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return od
}

// launchOpsDaemon is startOpsDaemon without waiting for the listeners.
func launchOpsDaemon(t *testing.T, cfg opsConfig, extraEnv ...string) *opsDaemon {
	t.Helper()
	e, _ := getDaemon(t)
	return spawnDaemon(t, e.topo, "ops", cfg.render(t), extraEnv, func(od *opsDaemon) {
		if leaks := od.passwordLeaks(); len(leaks) > 0 {
			t.Errorf("ops daemon log contains passwords:\n%s", strings.Join(leaks, "\n"))
		}
		if n := od.countMsg("sd_notify failed"); n > 0 {
			t.Errorf("ops daemon logged %d \"sd_notify failed\" lines", n)
		}
	})
}

// spawnDaemon starts the package's ifsocks binary in topo's P with the
// configuration text cfg and extraEnv added to its environment. At the end
// of the test it is stopped with SIGTERM, which must suffice, and check
// looks at its log; label names it in messages.
func spawnDaemon(t *testing.T, topo *topology, label, cfg string, extraEnv []string, check func(*opsDaemon)) *opsDaemon {
	t.Helper()
	_, shared := getDaemon(t) // builds the binary once for the package
	nd, err := nstest.LaunchDaemon(shared.bin, &nstest.NS{Name: topo.P}, cfg, extraEnv...)
	if err != nil {
		t.Fatal(err)
	}
	od := &opsDaemon{daemon: wrapDaemon(nd, shared.bin), cfgPath: nd.ConfigPath, topo: topo}
	t.Cleanup(func() {
		if err := od.stop(); err != nil {
			t.Errorf("%s daemon: %v", label, err)
		} else if od.exitErr() != nil {
			t.Errorf("%s daemon exited with %v after SIGTERM, want status 0", label, od.exitErr())
		}
		check(od)
		if t.Failed() {
			t.Logf("%s daemon log (last %d lines):\n%s", label, logTail, tail(od.logs.String(), logTail))
		}
	})
	return od
}

func (od *opsDaemon) pid() int { return od.cmd.Process.Pid }

// running reports whether the process is still alive.
func (od *opsDaemon) running() bool {
	select {
	case <-od.done:
		return false
	default:
		return true
	}
}

// waitListening dials every address from C until it accepts.
func (od *opsDaemon) waitListening(addrs []string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, addr := range addrs {
		for {
			c, err := nstest.Dialer{NS: od.topo.C, Timeout: time.Second}.Dial("tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-od.done:
				return fmt.Errorf("ops daemon exited before listening on %s: %v\nlog:\n%s", addr, od.exitErr(), od.logs.String())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("ops daemon not accepting on %s after %v: %v\nlog:\n%s", addr, limit, err, od.logs.String())
			}
		}
	}
	return nil
}

// writeConfig replaces the configuration file atomically (rename), so a
// reload never reads half a file.
func (od *opsDaemon) writeConfig(tb testing.TB, text string) {
	tb.Helper()
	od.nd.WriteConfig(tb, text)
}

const (
	msgReloaded     = "configuration reloaded"
	msgReloadFailed = "reload failed; the running configuration is unchanged"
)

// msgKey is how zap's JSON encoder writes a message without special
// characters; matching the raw text keeps polling cheap on long logs.
func msgKey(msg string) string { return nstest.MsgKey(msg) }

// countMsg counts the log lines whose msg is msg.
func (od *opsDaemon) countMsg(msg string) int {
	return strings.Count(od.logs.String(), msgKey(msg))
}

// lastMsg returns the last log line whose msg is msg, or nil.
func (od *opsDaemon) lastMsg(msg string) map[string]any {
	lines := strings.Split(od.logs.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], msgKey(msg)) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(lines[i]), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	return nil
}

// mark returns a position in the log for the *Since helpers.
func (od *opsDaemon) mark() int { return len(od.logs.String()) }

// entriesSince parses the log lines written after mark.
func (od *opsDaemon) entriesSince(mark int) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(od.logs.String()[mark:], "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitLineSince waits (bounded) for a line with msg written after mark.
func (od *opsDaemon) waitLineSince(tb testing.TB, mark int, msg string) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		for _, m := range od.entriesSince(mark) {
			if m["msg"] == msg {
				return m
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no %q line within 3s; log tail:\n%s", msg, tail(od.logs.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitStates waits (bounded) until the watcher has logged iface reaching
// state after mark, and returns every state change of iface since mark.
func (od *opsDaemon) waitStates(tb testing.TB, mark int, iface, state string) []map[string]any {
	tb.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		var changes []map[string]any
		for _, m := range od.entriesSince(mark) {
			if m["msg"] == "egress interface state changed" && m["interface"] == iface {
				changes = append(changes, m)
			}
		}
		if n := len(changes); n > 0 && changes[n-1]["to"] == state {
			return changes
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: state changes since mark %v, want the last to be %q; log tail:\n%s", iface, changes, state, tail(od.logs.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reload sends SIGHUP and waits (bounded) for the outcome line: it returns
// whether the reload succeeded and that line.
func (od *opsDaemon) reload(tb testing.TB) (bool, map[string]any) {
	tb.Helper()
	ok0, bad0 := od.countMsg(msgReloaded), od.countMsg(msgReloadFailed)
	if err := od.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		tb.Fatalf("SIGHUP: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if od.countMsg(msgReloaded) > ok0 {
			return true, od.lastMsg(msgReloaded)
		}
		if od.countMsg(msgReloadFailed) > bad0 {
			return false, od.lastMsg(msgReloadFailed)
		}
		if !od.running() {
			tb.Fatalf("daemon exited after SIGHUP: %v; log tail:\n%s", od.exitErr(), tail(od.logs.String(), 30))
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no reload outcome line within 5s of SIGHUP; log tail:\n%s", tail(od.logs.String(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mustReload reloads and fails the test unless the reload succeeded.
func (od *opsDaemon) mustReload(tb testing.TB) map[string]any {
	tb.Helper()
	ok, line := od.reload(tb)
	if !ok {
		tb.Fatalf("reload failed: %v", line)
	}
	return line
}

func (od *opsDaemon) passwordLeaks() []string {
	var leaks []string
	for _, line := range strings.Split(od.logs.String(), "\n") {
		for _, p := range opsPasswords {
			if strings.Contains(line, p) {
				leaks = append(leaks, line)
				break
			}
		}
	}
	return leaks
}

// ---------------------------------------------------------------------
// SOCKS shorthands.

// socksAs performs greeting, authentication and CONNECT as u via proxy.
// The connection, if any, is closed at the end of the test.
func socksAs(t *testing.T, ns, proxy string, u nstest.User, target string) socksResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := socksDo(ctx, ns, socksRequest{proxy: proxy, user: u.Name, pass: u.Password, target: target})
	if err != nil {
		t.Fatalf("SOCKS as %s via %s to %s: %v (so far %+v)", u.Name, proxy, target, err, res)
	}
	if res.conn != nil {
		t.Cleanup(func() { res.conn.Close() })
	}
	return res
}

// whoamiVia fetches whoami's "/" over a raw SOCKS connection as u and
// returns the address whoami saw, or fails the test.
func whoamiVia(t *testing.T, ns, proxy string, u nstest.User, target string) string {
	t.Helper()
	got, err := whoamiTry(ns, proxy, u, target)
	if err != nil {
		t.Fatalf("%s via %s to %s: %v", u.Name, proxy, target, err)
	}
	return got
}

// whoamiTry is whoamiVia without failing the test.
func whoamiTry(ns, proxy string, u nstest.User, target string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := socksDo(ctx, ns, socksRequest{proxy: proxy, user: u.Name, pass: u.Password, target: target})
	if err != nil {
		return "", err
	}
	if res.authStatus != 0 || res.reply != 0 {
		if res.conn != nil {
			res.conn.Close()
		}
		return "", fmt.Errorf("auth status %d reply %d, want 0 and 0", res.authStatus, res.reply)
	}
	defer res.conn.Close()
	_ = res.conn.SetDeadline(time.Now().Add(10 * time.Second))
	host, _, _ := net.SplitHostPort(target)
	if _, err := fmt.Fprintf(res.conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", host); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(res.conn)
	if err != nil {
		return "", fmt.Errorf("reading whoami: %w", err)
	}
	head, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	status, _, _ := strings.Cut(head, "\r\n")
	if !ok || !strings.HasPrefix(status, "HTTP/1.") || !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("whoami answered %q", status)
	}
	return strings.TrimSpace(body), nil
}

// wantAuthRefused checks that u cannot authenticate via proxy (RFC 1929
// status 0x01, then the server closes).
func wantAuthRefused(t *testing.T, ns, proxy string, u nstest.User) {
	t.Helper()
	res := socksAs(t, ns, proxy, u, svcV4+":8080")
	if res.method != methodUserPass || res.authStatus != 1 || !res.closed {
		t.Errorf("%s via %s: method %#x auth status %d closed %v, want 0x02, 0x01, closed", u.Name, proxy, res.method, res.authStatus, res.closed)
	}
}

// ---------------------------------------------------------------------
// Paced HTTP source in U: a transfer that takes as long as the test needs,
// with the data crossing the proxy all along (not sitting in buffers).

const pacedPort = 8081

// startPaced serves GET /paced?n=N&seed=S&rate=R (N bytes of the seeded
// stream at R bytes per second) on svcV4 and svcV6 port 8081 in U, until
// the end of the test.
func startPaced(t *testing.T, e *env) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /paced", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, err1 := strconv.ParseInt(q.Get("n"), 10, 64)
		seed, err2 := strconv.ParseUint(q.Get("seed"), 10, 64)
		rate, err3 := strconv.ParseInt(q.Get("rate"), 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil || n < 0 || rate < 1000 {
			http.Error(w, "bad n, seed or rate", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		const tick = 20 * time.Millisecond
		chunk := rate * int64(tick) / int64(time.Second)
		src := seededStream(seed)
		rc := http.NewResponseController(w)
		start := time.Now()
		for sent := int64(0); sent < n; {
			k := min(chunk, n-sent)
			if _, err := io.CopyN(w, src, k); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
			sent += k
			// Pace by the clock, not by sleeps, so the rate holds.
			if d := time.Until(start.Add(time.Duration(sent * int64(time.Second) / rate))); d > 0 {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
		}
	})
	var servers []*http.Server
	for _, addr := range []string{net.JoinHostPort(svcV4, strconv.Itoa(pacedPort)), net.JoinHostPort(svcV6, strconv.Itoa(pacedPort))} {
		l, err := nstest.ListenIn(e.topo.U, "tcp", addr)
		if err != nil {
			t.Fatalf("paced server listen %s: %v", addr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(l) }()
	}
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Close()
		}
	})
}

// download is one paced transfer through the proxy, read by a goroutine.
type download struct {
	user   string
	client string // our end of the SOCKS connection, as the flow log has it
	want   int64  // body length asked for
	seed   uint64
	reqLen int // bytes we sent (the request)
	conn   net.Conn
	start  time.Time

	got atomic.Int64 // body bytes received so far

	done chan struct{}
	// Valid after done:
	err   error // nil only if the whole body arrived and the server closed
	body  int64
	raw   int64 // every byte read from the connection (headers included)
	sum   string
	ended time.Time
}

// startDownload connects as u via proxy and fetches n paced bytes at rate
// bytes/s; the connection is closed at the end of the test.
func startDownload(t *testing.T, ns, proxy string, u nstest.User, n int64, seed uint64, rate int64) *download {
	t.Helper()
	res := socksAs(t, ns, proxy, u, net.JoinHostPort(svcV4, strconv.Itoa(pacedPort)))
	if res.authStatus != 0 || res.reply != 0 {
		t.Fatalf("%s: paced download: auth status %d reply %d, want 0 and 0", u.Name, res.authStatus, res.reply)
	}
	req := fmt.Sprintf("GET /paced?n=%d&seed=%d&rate=%d HTTP/1.0\r\nHost: %s\r\n\r\n", n, seed, rate, svcV4)
	dl := &download{user: u.Name, client: res.localAddr, want: n, seed: seed, reqLen: len(req),
		conn: res.conn, start: time.Now(), done: make(chan struct{})}
	// Bound the transfer: at the nominal rate plus a generous margin.
	_ = res.conn.SetDeadline(time.Now().Add(time.Duration(n/rate)*time.Second + 30*time.Second))
	if _, err := io.WriteString(res.conn, req); err != nil {
		t.Fatal(err)
	}
	go dl.read()
	t.Cleanup(func() {
		dl.conn.Close()
		<-dl.done
	})
	return dl
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type progressWriter struct {
	h   hash.Hash
	got *atomic.Int64
}

func (w progressWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.got.Add(int64(len(p)))
	return len(p), nil
}

func (dl *download) read() {
	defer close(dl.done)
	// Closing our side too ends the flow in the daemon (it passes the
	// server's half-close on and waits for ours).
	defer dl.conn.Close()
	cr := &countingReader{r: dl.conn}
	br := bufio.NewReader(cr)
	h := sha256.New()
	defer func() {
		dl.ended = time.Now()
		dl.raw = cr.n
		dl.body = dl.got.Load()
		dl.sum = fmt.Sprintf("%x", h.Sum(nil))
	}()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		dl.err = fmt.Errorf("response header: %w", err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		dl.err = fmt.Errorf("status %s", resp.Status)
		return
	}
	if _, err := io.Copy(progressWriter{h, &dl.got}, resp.Body); err != nil {
		dl.err = fmt.Errorf("body after %d bytes: %w", dl.got.Load(), err)
		return
	}
	// HTTP/1.0: the server closes after the body; read to EOF so raw is
	// everything the flow carried down.
	if _, err := io.Copy(io.Discard, br); err != nil {
		dl.err = fmt.Errorf("after the body: %w", err)
	}
}

// waitGot waits (bounded) until at least n body bytes have arrived.
func (dl *download) waitGot(tb testing.TB, n int64, limit time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for dl.got.Load() < n {
		select {
		case <-dl.done:
			tb.Fatalf("%s's download ended after %d bytes (%v), waiting for %d", dl.user, dl.body, dl.err, n)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s's download: %d bytes after %v, want >= %d", dl.user, dl.got.Load(), limit, n)
		}
	}
}

// wait waits (bounded) for the end of the download.
func (dl *download) wait(tb testing.TB, limit time.Duration) {
	tb.Helper()
	select {
	case <-dl.done:
	case <-time.After(limit):
		tb.Fatalf("%s's download still running after %v (%d of %d bytes)", dl.user, limit, dl.got.Load(), dl.want)
	}
}

// wantIntact checks that the download completed with exactly the bytes
// the server sent.
func (dl *download) wantIntact(tb testing.TB) {
	tb.Helper()
	if dl.err != nil || dl.body != dl.want || dl.sum != expectedSHA256(dl.seed, dl.want) {
		tb.Errorf("%s's download: %d bytes sha256 %s err %v; want %d bytes sha256 %s, no error",
			dl.user, dl.body, dl.sum, dl.err, dl.want, expectedSHA256(dl.seed, dl.want))
	}
}

// ---------------------------------------------------------------------
// wan3: a NIC of its own for the interface tests, so taking it down never
// disturbs the package daemon's users (wan1, wan2).

const (
	wan3V4 = "10.231.3.1"
	wan3V6 = "fd31:3::1"
	up3V4  = "10.231.3.2"
	up3V6  = "fd31:3::2"
)

// ensureWan3 adds the wan3 (P) <-> up3 (U) pair if it is missing and
// brings it to its working state: both ends up, addresses, and a default
// route of metric 300 in each family (behind wan1 and wan2, so unbound
// traffic never uses it). Idempotent; the tests that break wan3 call it
// again in their cleanup.
func ensureWan3(tb testing.TB, e *env) {
	tb.Helper()
	if err := setupWan3(e.topo); err != nil {
		tb.Fatalf("setting up wan3: %v", err)
	}
}

func setupWan3(topo *topology) error {
	P, U := topo.P, topo.U
	if _, err := nstest.IPErr("-n", P, "link", "show", "dev", "wan3"); err != nil {
		steps := [][]string{
			{"-n", P, "link", "add", "wan3", "type", "veth", "peer", "name", "up3", "netns", U},
			{"-n", U, "addr", "add", up3V4 + "/24", "dev", "up3"},
			{"-n", U, "-6", "addr", "add", up3V6 + "/64", "dev", "up3", "nodad"},
		}
		for _, s := range steps {
			if _, err := nstest.IPErr(s...); err != nil {
				return err
			}
		}
		if err := nstest.Sysctl(U, "net.ipv4.conf.up3.rp_filter=1"); err != nil {
			return err
		}
	}
	for _, s := range [][]string{
		{"-n", U, "link", "set", "up3", "up"},
		{"-n", P, "link", "set", "wan3", "up"},
	} {
		if _, err := nstest.IPErr(s...); err != nil {
			return err
		}
	}
	return restoreWan3Routes(topo)
}

// restoreWan3Routes puts back what an administrative down/up of wan3 (or
// up3) removes, as an operator's network manager would: the IPv6 addresses
// (the kernel flushes them on down unless keep_addr_on_down) and the
// default routes. Idempotent.
func restoreWan3Routes(topo *topology) error {
	P, U := topo.P, topo.U
	for _, s := range [][]string{
		{"-n", U, "addr", "replace", up3V4 + "/24", "dev", "up3"},
		{"-n", U, "-6", "addr", "replace", up3V6 + "/64", "dev", "up3", "nodad"},
		{"-n", P, "addr", "replace", wan3V4 + "/24", "dev", "wan3"},
		{"-n", P, "-6", "addr", "replace", wan3V6 + "/64", "dev", "wan3", "nodad"},
		{"-n", P, "route", "replace", "default", "via", up3V4, "dev", "wan3", "metric", "300"},
		{"-n", P, "-6", "route", "replace", "default", "via", up3V6, "dev", "wan3", "metric", "300"},
	} {
		if _, err := nstest.IPErr(s...); err != nil {
			return err
		}
	}
	return nil
}

// ---------------------------------------------------------------------
// Prometheus text format: nstest's, under the names these tests use.

type promMetrics = nstest.Metrics

func nsHTTP(ns, url string) (int, string, error) { return nstest.HTTPGet(ns, url) }

// scrape fetches and parses /metrics from inside ns.
func scrape(tb testing.TB, ns, addr string) promMetrics {
	tb.Helper()
	return nstest.Scrape(tb, ns, addr)
}

// wantMetric checks one sample's exact value; a missing sample fails.
func wantMetric(tb testing.TB, pm promMetrics, name string, labels map[string]string, want float64) {
	tb.Helper()
	nstest.WantMetric(tb, pm, name, labels, want)
}

// wantFields checks exact field values of a log line.
func wantFields(tb testing.TB, line map[string]any, want map[string]any) {
	tb.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if line[k] != want[k] {
			tb.Errorf("log line %q: %s = %#v, want %#v", line["msg"], k, line[k], want[k])
		}
	}
}
