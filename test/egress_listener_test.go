//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// A [[listeners]] entry without authentication, limited to a client
// network and mapped to wan2: a browser pointed at it fetches a page that
// shows wan2's address, and a client outside allow_clients is closed
// before any SOCKS byte.

const egAnonListen = egProxy + ":1081"

const anonListenerConfig = `
[[listeners]]
address = "` + egAnonListen + `"
auth = "none"
allow_clients = ["10.233.0.0/28"]
interface = "wan2"
`

// chromiumPath finds the browser: skip without it on a laptop, fail in CI
// (which installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (CI is set, so this is a failure, not a skip): apt-get install -y chromium")
	}
	t.Skip("chromium is not installed")
	return ""
}

// chromiumDumpDOM loads url in headless Chromium inside namespace ns through
// the SOCKS5 proxy and returns the DOM it prints. The browser has a fresh
// profile and HOME, no background networking, and lives in ns, which has
// no route anywhere but our own namespaces. It is bounded by limit: on
// timeout its whole process group is killed.
func chromiumDumpDOM(t *testing.T, bin, ns, proxy, url string, limit time.Duration) (string, string, error) {
	t.Helper()
	home := t.TempDir()
	args := []string{"netns", "exec", ns, bin,
		"--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--disable-default-apps", "--metrics-recording-only", "--disable-extensions",
		"--disable-dev-shm-usage", "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad", "--disable-component-extensions-with-background-pages", "--disable-features=NetworkTimeServiceQuerying",
		"--user-data-dir=" + filepath.Join(home, "profile"),
		"--proxy-server=" + proxyServer(proxy),
		"--dump-dom", url,
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	// Own process group, so a timeout takes the renderer and zygote
	// processes too; and they die if this test process does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return out.String(), errb.String(), err
}

// Test 1: Chromium through the no-auth listener leaves by wan2; a client
// address outside allow_clients is closed at accept (no SOCKS reply), by
// our raw client and by curl.
func TestNICListenerChromium(t *testing.T) {
	bin := chromiumPath(t)
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	od := startEgressDaemon(t, topo, egressConfig(nil, anonListenerConfig), egAnonListen)

	// C has no route to U's service addresses: a page from there can
	// only have come through the proxy (and the browser reaches nothing
	// outside our namespaces).
	if c, err := (nstest.Dialer{NS: topo.C, Timeout: 2 * time.Second}).Dial("tcp", egTarget); err == nil {
		c.Close()
		t.Fatalf("C reaches %s directly; the test would prove nothing", egTarget)
	}

	t.Run("chromium", func(t *testing.T) {
		url := "http://" + egTarget + "/page"
		start := time.Now()
		dom, stderr, err := chromiumDumpDOM(t, bin, topo.C, egAnonListen, url, 30*time.Second)
		t.Logf("chromium took %v", time.Since(start).Round(time.Millisecond))
		if left := leftInNetns(topo.C, 5*time.Second); left != "" {
			t.Errorf("processes left in %s after chromium exited (killed with the namespace): %s", topo.C, left)
		}
		// Chromium asks for a few hosts of its own despite the switches
		// (a preconnect to its search engine, ...): the proxy cannot
		// resolve them in our namespaces, so none may have succeeded.
		for _, m := range od.logEntries() {
			if m["msg"] == "flow" && m["target"] != egTarget {
				t.Logf("chromium also asked for %v: reply %v", m["target"], m["reply"])
				if m["reply"] == float64(0) {
					t.Errorf("a flow to %v succeeded: %v", m["target"], m)
				}
			}
		}
		if err != nil {
			t.Fatalf("chromium: %v\nstdout:\n%s\nstderr (tail):\n%s", err, dom, tail(stderr, 20))
		}
		want := `<p id="seen">` + seenWan2 + `</p>`
		if !strings.Contains(dom, want) {
			t.Fatalf("chromium's DOM lacks %s:\n%s\nstderr (tail):\n%s", want, dom, tail(stderr, 20))
		}
		// The page came through the listener, as anonymous flows of a
		// client inside allow_clients, leaving by wan2. (How they end
		// depends on when the browser closed them.)
		od.waitFlow(t, 3*time.Second, func(m map[string]any) bool {
			down, _ := m["bytes_down"].(float64)
			return m["target"] == egTarget && down > 0
		})
		for _, m := range od.logEntries() {
			if m["msg"] == "flow" && m["target"] == egTarget {
				wantFields(t, m, map[string]any{"user": "", "interface": "wan2", "reply": float64(0)})
				if c := fmt.Sprint(m["client"]); !strings.HasPrefix(c, egClient+":") {
					t.Errorf("flow from %s, want %s", c, egClient)
				}
			}
		}
	})

	t.Run("go client", func(t *testing.T) {
		f := mustFetch(t, topo.C, egAnonListen, egAnon, egTarget)
		if f.seen != seenWan2 {
			t.Errorf("upstream saw %q, want %q", f.seen, seenWan2)
		}
	})

	t.Run("outside allow_clients", func(t *testing.T) {
		// Inside the CIDR the greeting is answered ...
		got, err := greetFrom(topo.C, egClient, egAnonListen)
		if err != nil || string(got) != "\x05\x00" {
			t.Fatalf("from %s: got % x (%v), want 05 00", egClient, got, err)
		}
		before := scrape(t, topo.P, egMetrics)
		refused0, _ := before.Get("ifsocks_connections_refused_total", map[string]string{"reason": "not_allowed"})
		// ... from outside it the connection ends without a byte.
		got, err = greetFrom(topo.C, egStranger, egAnonListen)
		if !closedWithoutReply(got, err) {
			t.Errorf("from %s: got % x (%v), want the connection closed without a reply", egStranger, got, err)
		}
		// curl, bound to the same stranger address, gets no proxy
		// answer either and fetches nothing.
		r := curlIn(t, topo.C, curlOpts{proxy: egAnonListen, maxTime: 10, extra: []string{"--interface", egStranger}}, "http://"+egTarget+"/")
		if r.exit != curlExitProxy || r.stdout != "" {
			t.Errorf("curl from %s: exit %d stdout %q stderr %q, want exit %d and nothing fetched", egStranger, r.exit, r.stdout, r.stderr, curlExitProxy)
		}
		// And from inside, curl works and leaves by wan2.
		if body := curlOK(t, topo.C, curlOpts{proxy: egAnonListen, maxTime: 10, extra: []string{"--interface", egClient}}, "http://"+egTarget+"/"); body != seenWan2 {
			t.Errorf("curl from %s: upstream saw %q, want %q", egClient, body, seenWan2)
		}
		after := scrape(t, topo.P, egMetrics)
		wantMetric(t, after, "ifsocks_connections_refused_total", map[string]string{"reason": "not_allowed"}, refused0+2)
		for _, m := range od.logEntries() {
			if m["msg"] == "flow" && strings.HasPrefix(fmt.Sprint(m["client"]), egStranger+":") {
				t.Errorf("a flow of the refused client was logged: %v", m)
			}
		}
	})
}

// leftInNetns waits (bounded) until no process runs in ns and returns the
// pids still there after limit ("" when none).
func leftInNetns(ns string, limit time.Duration) string {
	deadline := time.Now().Add(limit)
	for {
		out, err := nstest.IPErr("netns", "pids", ns)
		if out = strings.TrimSpace(out); err != nil || out == "" || time.Now().After(deadline) {
			return strings.Join(strings.Fields(out), " ")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A [[listeners]] entry with password authentication and interface wan2:
// a user without an egress of its own leaves by wan2 there, and by the
// kernel's choice (wan1) on the plain [server] listener; a user with an
// egress of its own (wan1) keeps it on the listener.
func TestNICListenerPassword(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	plain, mapped := net.JoinHostPort(egProxy, "1080"), net.JoinHostPort(egProxy, "1082")
	body := userBlock(egKern, "") + userBlock(egFo, `interface = "wan1"`) + `
[[listeners]]
address = "` + mapped + `"
interface = "wan2"
`
	od := startEgressDaemon(t, topo, egressConfig([]string{plain}, body), plain, mapped)
	for _, c := range []struct {
		u                  nstest.User
		proxy, want, iface string // iface: the flow line's ("" = kernel routing)
	}{
		{egKern, mapped, seenWan2, "wan2"},
		{egKern, plain, seenWan1, ""},
		{egFo, mapped, seenWan1, "wan1"},
		{egFo, plain, seenWan1, "wan1"},
	} {
		line := wantSeen(t, od, topo.C, c.proxy, c.u, egTarget, c.want)
		wantFields(t, line, map[string]any{"user": c.u.Name, "interface": c.iface})
	}
	// No authentication is not offered there.
	res := socksAsEg(t, topo.C, mapped, egAnon, egTarget)
	if res.method != methodNone {
		t.Errorf("no-auth client on a password listener: method %#x, want 0xff", res.method)
	}
}
