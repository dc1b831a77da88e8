//go:build linux

package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The HTTP auth hook tests: a hook server run by the test inside P (on its
// loopback), answering per user; the daemon in P asks it for the users it
// does not have in [[users]] and sends their flows where the hook says.

// authPrefix starts the namespace names of the auth backend tests.
const authPrefix = "h16-"

// hookToken is the bearer token the daemon reads from token_file; the
// hook refuses requests without it.
const hookToken = "hook-token-5f1e"

// hookUser is a user the hook knows; its password is "pw-" + name.
func hookUser(name string) nstest.User { return nstest.User{Name: name, Password: "pw-" + name} }

// hookRequest is what the hook saw of one request.
type hookRequest struct {
	path string
	at   time.Time
	body map[string]any
}

// hookServer is an HTTP auth hook in a namespace. Users it has no answer
// for, and wrong passwords, get {"allow": false}.
type hookServer struct {
	ns   string
	addr string // 127.0.0.1:port, kept across restarts

	mu      sync.Mutex
	answers map[string]string        // user -> the "egress" object (raw JSON) or a whole raw answer
	raw     map[string]bool          // answers[user] is the whole answer
	delay   map[string]time.Duration // user -> time to wait before answering
	seen    map[string][]hookRequest

	srv  *http.Server
	done chan struct{}
}

func startHook(t *testing.T, ns string) *hookServer {
	t.Helper()
	h := &hookServer{ns: ns, addr: "127.0.0.1:0", answers: map[string]string{}, raw: map[string]bool{},
		delay: map[string]time.Duration{}, seen: map[string][]hookRequest{}}
	h.start(t)
	t.Cleanup(h.stop)
	return h
}

func (h *hookServer) start(t *testing.T) {
	t.Helper()
	ln, err := nstest.ListenIn(h.ns, "tcp4", h.addr)
	if err != nil {
		t.Fatalf("hook listen: %v", err)
	}
	h.addr = ln.Addr().String()
	h.srv = &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 5 * time.Second}
	h.done = make(chan struct{})
	go func() { defer close(h.done); _ = h.srv.Serve(ln) }()
}

// stop closes the hook: its port refuses connections until start.
func (h *hookServer) stop() {
	if h.srv == nil {
		return
	}
	_ = h.srv.Close()
	<-h.done
	h.srv = nil
}

func (h *hookServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.Header.Get("Authorization") != "Bearer "+hookToken {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	user, _ := body["user"].(string)
	pass, _ := body["password"].(string)
	h.mu.Lock()
	h.seen[user] = append(h.seen[user], hookRequest{path: r.URL.Path, at: time.Now(), body: body})
	answer, known := h.answers[user]
	raw, delay := h.raw[user], h.delay[user]
	h.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case raw:
		fmt.Fprint(w, answer)
	case !known || pass != "pw-"+user:
		fmt.Fprint(w, `{"allow": false}`)
	default:
		fmt.Fprintf(w, `{"allow": true, "egress": %s}`, answer)
	}
}

// set makes the hook accept user with this egress object.
func (h *hookServer) set(user, egress string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answers[user], h.raw[user] = egress, false
}

// setRaw makes the hook answer user's logins with this body.
//
//lint:ignore U1000 for the auth-hook tests in progress (issue 16)
func (h *hookServer) setRaw(user, answer string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answers[user], h.raw[user] = answer, true
}

func (h *hookServer) setDelay(user string, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delay[user] = d
}

// requests returns the requests the hook got about user.
func (h *hookServer) requests(user string) []hookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookRequest(nil), h.seen[user]...)
}

// hookConfig renders a daemon configuration using the hook at url, with
// a [[users]] break-glass account "local" on wan2.
func hookConfig(dir, url, cacheTTL string, authFailLimit int) string {
	body := fmt.Sprintf(`
[auth]
backend = "http"
cache_ttl = %q
negative_cache_ttl = "0s"
[auth.http]
url = %q
timeout = "1s"
token_file = %q
`, cacheTTL, url, filepath.Join(dir, "token"))
	body += userBlock(hookLocal, `interface = "wan2"`)
	cfg := egressConfig([]string{egProxy + ":1080"}, body)
	return strings.Replace(cfg, "[server]\n", fmt.Sprintf("[server]\nmax_handshakes_per_ip = 0\nauth_fail_limit = %d\n", authFailLimit), 1)
}

var hookLocal = nstest.User{Name: "local", Password: "local-Pw-8d21"}

// hookPasswords are the passwords of this file, which no log may hold.
var hookPasswords = []string{hookLocal.Password, "pw-alice", "pw-bob", "pw-carol", "pw-many", "pw-slow", "pw-badif", "pw-badkey", "wrong-Pw-0b9c", hookToken}

func TestAuthHook(t *testing.T) {
	topo := newEgressTopologyAs(t, authPrefix)
	startEgressWhoami(t, topo)
	hook := startHook(t, topo.P)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(hookToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "http://" + hook.addr + "/auth"
	od := spawnDaemon(t, topo, "hook", hookConfig(dir, url, "4s", 0), nil, func(od *opsDaemon) {
		for _, line := range strings.Split(od.logs.String(), "\n") {
			for _, p := range hookPasswords {
				if strings.Contains(line, p) {
					t.Errorf("daemon log contains a secret: %s", line)
				}
			}
		}
	})
	proxyAddr := egProxy + ":1080"
	if err := od.waitListening([]string{proxyAddr}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	alice, bob, carol := hookUser("alice"), hookUser("bob"), hookUser("carol")
	hook.set("alice", `{"interface": "wan1"}`)
	hook.set("bob", `{"interfaces": ["wan2", "wan1"], "strategy": "failover"}`)

	t.Run("egress from the hook", func(t *testing.T) {
		if line := wantSeen(t, od, topo.C, proxyAddr, alice, egTarget, seenWan1); line["interface"] != "wan1" {
			t.Errorf("alice's flow line interface = %v, want wan1", line["interface"])
		}
		if line := wantSeen(t, od, topo.C, proxyAddr, bob, egTarget, seenWan2); line["interface"] != "wan2" {
			t.Errorf("bob's flow line interface = %v, want wan2", line["interface"])
		}
		reqs := hook.requests("alice")
		if len(reqs) != 1 {
			t.Fatalf("hook asked %d times about alice, want 1", len(reqs))
		}
		b := reqs[0].body
		if b["protocol"] != "socks5" || !strings.HasPrefix(fmt.Sprint(b["client"]), egClient+":") || b["listener"] != proxyAddr {
			t.Errorf("hook request = %v, want protocol socks5, client %s:*, listener %s", b, egClient, proxyAddr)
		}
		// [[users]] first: the hook is never asked about a local name.
		wantSeen(t, od, topo.C, proxyAddr, hookLocal, egTarget, seenWan2)
		if n := len(hook.requests(hookLocal.Name)); n != 0 {
			t.Errorf("hook asked %d times about the [[users]] account, want 0", n)
		}
		// A wrong password is the hook's refusal.
		if _, err := egFetch(topo.C, proxyAddr, nstest.User{Name: "alice", Password: "wrong-Pw-0b9c"}, egTarget); err == nil {
			t.Error("alice with a wrong password was let in")
		}
	})

	t.Run("HTTP proxy on the same port", func(t *testing.T) {
		// The login of every protocol goes to the hook, whose answer
		// steers the flow: bob leaves by wan2 through curl's HTTP
		// proxy too, forwarded and tunnelled.
		for _, tunnel := range []bool{false, true} {
			args := []string{"-w", "\n%{http_code}", "http://" + egTarget + "/"}
			if tunnel {
				args = append([]string{"--proxytunnel"}, args...)
			}
			out, errOut, code := curlHTTP(t, topo.C, proxyURL(bob, proxyAddr), args...)
			if code != 0 || !strings.HasPrefix(out, seenWan2+"\n") {
				t.Errorf("curl -x as bob (tunnel %v): exit %d, %q %q; want %q", tunnel, code, out, errOut, seenWan2)
			}
		}
		out, _, _ := curlHTTP(t, topo.C, proxyURL(nstest.User{Name: "bob", Password: "wrong-Pw-0b9c"}, proxyAddr), "-o", "/dev/null", "-w", "%{http_code}", "http://"+egTarget+"/")
		if out != "407" {
			t.Errorf("bob with a wrong password through the HTTP proxy: status %s, want 407", out)
		}
	})

	t.Run("changed answer after cache_ttl", func(t *testing.T) {
		first := hook.requests("alice")[0].at
		hook.set("alice", `{"interface": "wan2"}`)
		deadline := time.Now().Add(20 * time.Second)
		for {
			f := mustFetch(t, topo.C, proxyAddr, alice, egTarget)
			if f.seen == seenWan2 {
				break
			}
			if f.seen != seenWan1 {
				t.Fatalf("alice left as %q", f.seen)
			}
			if time.Now().After(deadline) {
				t.Fatal("alice still leaves by wan1 20s after the hook changed its answer (cache_ttl 4s)")
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Only the cache can hide the new answer: the second request
		// with alice's password (the one that saw it) came no sooner
		// than cache_ttl after the first.
		var at []time.Duration
		for _, r := range hook.requests("alice") {
			if r.body["password"] == alice.Password {
				at = append(at, r.at.Sub(first))
			}
		}
		if len(at) != 2 || at[1] < 4*time.Second {
			t.Errorf("hook requests about alice at %v after the first; want one more, at least cache_ttl (4s) later", at)
		}
	})

	t.Run("reload re-reads [auth]", func(t *testing.T) {
		od.writeConfig(t, hookConfig(dir, "http://"+hook.addr+"/auth2", "1m", 0))
		od.mustReload(t)
		wantSeen(t, od, topo.C, proxyAddr, bob, egTarget, seenWan2)
		reqs := hook.requests("bob")
		if last := reqs[len(reqs)-1]; last.path != "/auth2" {
			t.Errorf("after the reload bob was asked about at %q, want /auth2 (the new url)", last.path)
		}
	})

	t.Run("hook down: refused, cached user still served", func(t *testing.T) {
		hook.set("carol", `{"interface": "wan1"}`)
		hook.stop()
		defer hook.start(t)
		mark := od.mark()
		wantSeen(t, od, topo.C, proxyAddr, bob, egTarget, seenWan2) // cached for 1m since the reload
		if _, err := egFetch(topo.C, proxyAddr, carol, egTarget); err == nil {
			t.Fatal("carol was let in while the hook is down")
		}
		line := od.waitLineSince(t, mark, "authentication failed")
		if line["user"] != "carol" || !strings.Contains(fmt.Sprint(line["error"]), "auth backend unavailable") {
			t.Errorf("log line %v, want carol refused with the backend unavailable", line)
		}
		wantMetricAtLeast(t, scrape(t, topo.P, egMetrics), "ifsocks_auth_failures_total", map[string]string{"reason": "backend_unavailable"}, 1)
	})

	t.Run("slow hook refused after timeout", func(t *testing.T) {
		hook.set("slow", `{"interface": "wan1"}`)
		hook.setDelay("slow", 10*time.Second)
		start := time.Now()
		_, err := egFetch(topo.C, proxyAddr, hookUser("slow"), egTarget)
		took := time.Since(start)
		if err == nil {
			t.Fatal("login answered after 10s was let in with timeout = 1s")
		}
		// Not before the timeout; well before the hook's answer.
		if took < time.Second || took > 8*time.Second {
			t.Errorf("refused after %v, want about the 1s timeout", took)
		}
		wantMetricAtLeast(t, scrape(t, topo.P, egMetrics), "ifsocks_auth_backend_requests_total", map[string]string{"backend": "http", "result": "error"}, 1)
	})

	t.Run("invalid answers refused with the key logged", func(t *testing.T) {
		hook.set("badif", `{"interface": "eth9"}`)
		hook.set("badkey", `{"iface": "wan1"}`)
		for _, c := range []struct{ user, want string }{
			{"badif", `egress.interface: "eth9": no such interface`},
			{"badkey", `egress.iface`},
		} {
			mark := od.mark()
			if _, err := egFetch(topo.C, proxyAddr, hookUser(c.user), egTarget); err == nil {
				t.Errorf("%s was let in with an invalid answer", c.user)
				continue
			}
			line := od.waitLineSince(t, mark, "authentication failed")
			if msg := fmt.Sprint(line["error"]); line["user"] != c.user || !strings.Contains(msg, c.want) {
				t.Errorf("log line %v, want %s refused with %s", line, c.user, c.want)
			}
		}
		wantMetricAtLeast(t, scrape(t, topo.P, egMetrics), "ifsocks_auth_backend_requests_total", map[string]string{"backend": "http", "result": "invalid"}, 2)
	})

	t.Run("1000 concurrent logins, one hook request", func(t *testing.T) {
		hook.set("many", `{"interface": "wan1"}`)
		// The answer takes a while, so that the logins overlap it.
		hook.setDelay("many", 300*time.Millisecond)
		const n = 1000
		conns := make(chan net.Conn, n)
		fwd := nstest.Dialer{NS: topo.C, Timeout: 5 * time.Second}
		for range n {
			c, err := fwd.Dial("tcp", proxyAddr)
			if err != nil {
				t.Fatalf("dial proxy: %v", err)
			}
			conns <- c
		}
		// golang.org/x/net/proxy speaks SOCKS5 over the connections
		// opened above, all at once.
		d, err := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: "many", Password: "pw-many"}, preDialed(conns))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				c, err := d.(proxy.ContextDialer).DialContext(context.Background(), "tcp", egTarget)
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			})
		}
		wg.Wait()
		close(errs)
		failed := 0
		var first error
		for err := range errs {
			if failed++; first == nil {
				first = err
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d logins failed, first: %v", failed, n, first)
		}
		if got := len(hook.requests("many")); got != 1 {
			t.Errorf("hook asked %d times about 1000 concurrent logins of one user, want 1", got)
		}
	})

	t.Run("backend refusals count towards auth_fail_limit", func(t *testing.T) {
		od.writeConfig(t, hookConfig(dir, url, "1m", 3))
		od.mustReload(t)
		hook.set("dave", `{"interface": "wan1"}`)
		for range 3 {
			if _, err := egFetch(topo.C, proxyAddr, nstest.User{Name: "dave", Password: "wrong-Pw-0b9c"}, egTarget); err == nil {
				t.Fatal("dave with a wrong password was let in")
			}
		}
		asked := len(hook.requests("dave"))
		if _, err := egFetch(topo.C, proxyAddr, hookUser("dave"), egTarget); err == nil {
			t.Error("the right password was accepted from a client blocked after 3 refusals by the hook")
		}
		if got := len(hook.requests("dave")); got != asked {
			t.Errorf("hook asked %d more times while the client was blocked, want 0", got-asked)
		}
	})
}

// preDialed is a proxy.Dialer handing out connections opened beforehand.
type preDialed chan net.Conn

func (p preDialed) Dial(network, addr string) (net.Conn, error) {
	select {
	case c := <-p:
		return c, nil
	default:
		return nil, errors.New("no pre-dialed connection left")
	}
}

func (p preDialed) DialContext(_ context.Context, network, addr string) (net.Conn, error) {
	return p.Dial(network, addr)
}

// wantMetricAtLeast checks that a sample is at least min.
func wantMetricAtLeast(tb testing.TB, pm promMetrics, name string, labels map[string]string, min float64) {
	tb.Helper()
	got, ok := pm.Get(name, labels)
	if !ok || got < min {
		tb.Errorf("%s%v = %v (present: %v), want at least %v", name, labels, got, ok, min)
	}
}

// TestAuthHookQuota: a quota in the hook's answer is enforced on a host
// with [accounting]: the user's flows are refused with 0x02 (outcome
// quota) once their traffic reaches it, while another hook user without a
// quota carries on.
func TestAuthHookQuota(t *testing.T) {
	topo := newEgressTopologyAs(t, authPrefix)
	startEgressWhoami(t, topo)
	hook := startHook(t, topo.P)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(hookToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := hookConfig(dir, "http://"+hook.addr+"/auth", "1h", 0) +
		fmt.Sprintf("\n[accounting]\npath = %q\nflush_interval = \"200ms\"\n", filepath.Join(dir, "usage.db"))
	od := spawnDaemon(t, topo, "hookquota", cfg, nil, func(*opsDaemon) {})
	proxyAddr := egProxy + ":1080"
	if err := od.waitListening([]string{proxyAddr}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	alice, bob := hookUser("alice"), hookUser("bob")
	hook.set("alice", `{"interface": "wan1", "quota": "1KiB", "quota_period": "day"}`)
	hook.set("bob", `{"interface": "wan1"}`)

	// Each fetch moves a request and a whoami answer (a few hundred
	// bytes); alice must be refused within a bounded number of them.
	fetches := 0
	var refused socksResult
	for range 50 {
		if _, err := egFetch(topo.C, proxyAddr, alice, egTarget); err == nil {
			fetches++
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		res, err := socksDo(ctx, topo.C, socksRequest{proxy: proxyAddr, user: alice.Name, pass: alice.Password, target: egTarget})
		cancel()
		if err != nil {
			t.Fatalf("alice after %d fetches: %v", fetches, err)
		}
		if res.conn != nil {
			res.conn.Close()
		}
		refused = res
		break
	}
	if fetches == 0 {
		t.Fatal("alice's first fetch failed: the answer with a quota was not accepted")
	}
	if refused.authStatus != 0 || refused.reply != 2 {
		t.Fatalf("alice after %d fetches: auth %d reply %d, want refused with 0x02 by her quota", fetches, refused.authStatus, refused.reply)
	}
	line := od.waitFlow(t, 5*time.Second, func(m map[string]any) bool {
		return m["user"] == alice.Name && m["outcome"] == "quota"
	})
	t.Logf("alice refused after %d fetches: %s", fetches, jsonLine(line))
	// bob, from the same hook without a quota, is not held to alice's.
	for range fetches + 2 {
		if _, err := egFetch(topo.C, proxyAddr, bob, egTarget); err != nil {
			t.Fatalf("bob (no quota): %v", err)
		}
	}
	if n := len(hook.requests("alice")); n != 1 {
		t.Errorf("hook asked %d times about alice, want 1 (cached)", n)
	}
}
