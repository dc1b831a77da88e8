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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// The HTTP proxy on the SOCKS port (issue 13): real clients (curl, Python's
// http.client and urllib) in C, the daemon in P, whoami in U answering
// which NIC a connection came in by (see egress_helpers_test.go).

const egHTTPListen = egProxy + ":1080"

var (
	egHTTPNoNIC = nstest.User{Name: "kern", Password: "kern-Pw-e3c9"} // egress interface that does not exist
)

// httpProxyConfig: fo leaves by wan1, sid by wan2, kern by a missing NIC.
func httpProxyConfig() string {
	return egressConfig([]string{egHTTPListen},
		userBlock(egFo, `interface = "wan1"`)+
			userBlock(egSid, `interface = "wan2"`)+
			userBlock(egHTTPNoNIC, `interface = "nosuch9"`))
}

// proxyURL is the http:// proxy URL for u ("" user: no credentials).
func proxyURL(u nstest.User, addr string) string {
	if u.Name == "" {
		return "http://" + addr
	}
	return "http://" + u.Name + ":" + u.Password + "@" + addr
}

// curlHTTP runs curl in ns with the HTTP proxy proxy and the extra
// arguments, and returns stdout, stderr and the exit code.
func curlHTTP(t *testing.T, ns, proxy string, args ...string) (string, string, int) {
	t.Helper()
	all := append([]string{"netns", "exec", ns, "curl", "-sS", "-g", "--max-time", "20", "-x", proxy}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errOut, err := nstest.Run(ctx, nil, "ip", all...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, errOut, 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return out, errOut, ee.ExitCode()
	}
	t.Fatalf("curl %v: %v", args, err)
	return "", "", -1
}

// curlStatus fetches url through the proxy as u and returns the status
// curl saw (for --proxytunnel, the CONNECT's) and the body.
func curlStatus(t *testing.T, ns string, u nstest.User, tunnel bool, url string) (int, string) {
	t.Helper()
	args := []string{"-o", "/dev/stderr", "-w", "%{http_code} %{http_connect}"}
	if tunnel {
		args = append(args, "--proxytunnel")
	}
	out, body, _ := curlHTTP(t, ns, proxyURL(u, egHTTPListen), append(args, url)...)
	codes := strings.Fields(out)
	if len(codes) != 2 {
		t.Fatalf("curl wrote %q, want two status codes", out)
	}
	code, _ := strconv.Atoi(codes[0])
	if tunnel {
		code, _ = strconv.Atoi(codes[1])
	}
	return code, strings.TrimSpace(body)
}

func TestHTTPProxyCurl(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	od := startEgressDaemon(t, topo, httpProxyConfig(), egHTTPListen)
	url := "http://" + egTarget + "/"

	for _, tc := range []struct {
		u      nstest.User
		tunnel bool
		proto  string
		iface  string
		seen   string
	}{
		{egFo, false, "http", "wan1", seenWan1},
		{egFo, true, "http-connect", "wan1", seenWan1},
		{egSid, false, "http", "wan2", seenWan2},
		{egSid, true, "http-connect", "wan2", seenWan2},
	} {
		t.Run(tc.u.Name+"/"+tc.proto, func(t *testing.T) {
			mark := od.mark()
			code, body := curlStatus(t, topo.C, tc.u, tc.tunnel, url)
			if code != 200 || body != tc.seen {
				t.Fatalf("status %d body %q, want 200 and %q", code, body, tc.seen)
			}
			line := od.waitLineSince(t, mark, "flow")
			wantFields(t, line, map[string]any{"protocol": tc.proto, "user": tc.u.Name, "interface": tc.iface,
				"target": egTarget, "outcome": "ok"})
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		for _, tunnel := range []bool{false, true} {
			code, _ := curlStatus(t, topo.C, nstest.User{Name: egFo.Name, Password: "not-" + egFo.Password}, tunnel, url)
			if code != 407 {
				t.Errorf("tunnel %v: status %d, want 407", tunnel, code)
			}
			code, _ = curlStatus(t, topo.C, nstest.User{Name: "nobody", Password: egFo.Password}, tunnel, url)
			if code != 407 {
				t.Errorf("tunnel %v, unknown user: status %d, want 407", tunnel, code)
			}
		}
	})

	t.Run("no credentials", func(t *testing.T) {
		out, _, _ := curlHTTP(t, topo.C, proxyURL(egAnon, egHTTPListen), "-i", url)
		head, _, _ := strings.Cut(out, "\r\n\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 407 ") {
			t.Fatalf("answer %q, want 407", head)
		}
		if !strings.Contains(head, "\r\nProxy-Authenticate: Basic realm=\"ifsocks\"") {
			t.Errorf("407 lacks the Basic challenge with realm ifsocks:\n%s", head)
		}
	})

	t.Run("policy", func(t *testing.T) {
		// The proxy's own address is refused (deny_own_addresses).
		own := "http://" + egProxy + ":9/"
		for _, tunnel := range []bool{false, true} {
			mark := od.mark()
			if code, _ := curlStatus(t, topo.C, egFo, tunnel, own); code != 403 {
				t.Errorf("tunnel %v: status %d, want 403", tunnel, code)
			}
			wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"outcome": "denied", "user": egFo.Name})
		}
	})

	t.Run("missing NIC", func(t *testing.T) {
		for _, tunnel := range []bool{false, true} {
			mark := od.mark()
			if code, _ := curlStatus(t, topo.C, egHTTPNoNIC, tunnel, url); code != 503 {
				t.Errorf("tunnel %v: status %d, want 503", tunnel, code)
			}
			wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"outcome": "unreachable", "interface": "nosuch9"})
		}
	})

	t.Run("not a proxy request", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _, err := nstest.Run(ctx, nil, "ip", "netns", "exec", topo.C, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
			"http://"+egHTTPListen+"/")
		if err != nil || out != "400" {
			t.Errorf("origin-form GET to the proxy: %q %v, want 400", out, err)
		}
	})

	t.Run("socks5 still", func(t *testing.T) {
		wantSeen(t, od, topo.C, egHTTPListen, egSid, egTarget, seenWan2)
	})

	t.Run("metrics", func(t *testing.T) {
		// Each protocol has its own series: one ok flow of each kind per
		// user above, the SOCKS5 one included.
		pm := scrape(t, topo.P, egMetrics)
		for _, s := range []struct{ proto, user, iface string }{
			{"http", "fo", "wan1"}, {"http-connect", "fo", "wan1"},
			{"http", "sid", "wan2"}, {"http-connect", "sid", "wan2"}, {"socks5", "sid", "wan2"},
		} {
			wantMetric(t, pm, "ifsocks_flows_total", map[string]string{"protocol": s.proto, "user": s.user, "interface": s.iface, "outcome": "ok"}, 1)
		}
	})
	if leaks := od.passwordLeaks(); len(leaks) > 0 {
		t.Errorf("passwords in the log: %v", leaks)
	}
}

// proxyServer is Chromium's --proxy-server value: proxy as given when it
// names a scheme, else a SOCKS5 proxy.
func proxyServer(proxy string) string {
	if strings.Contains(proxy, "://") {
		return proxy
	}
	return "socks5://" + proxy
}

// The no-auth listener speaks SOCKS4a and HTTP besides SOCKS5: curl
// --socks4a and Chromium through it as an HTTP proxy leave by wan2.
func TestHTTPProxyNoAuthListener(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	cfg := egressConfig([]string{egHTTPListen}, userBlock(egFo, `interface = "wan1"`)+anonListenerConfig+
		`protocols = ["socks5", "http", "socks4"]`+"\n")
	od := startEgressDaemon(t, topo, cfg, egHTTPListen, egAnonListen)
	url := "http://" + egTarget + "/"

	t.Run("curl socks4a", func(t *testing.T) {
		for _, flag := range []string{"--socks4a", "--socks4"} {
			mark := od.mark()
			out, errOut, code := curlHTTP(t, topo.C, "", flag, egAnonListen, url)
			if code != 0 || strings.TrimSpace(out) != seenWan2 {
				t.Fatalf("curl %s: exit %d %q %s, want %q", flag, code, out, errOut, seenWan2)
			}
			wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"protocol": "socks4", "user": "", "interface": "wan2", "outcome": "ok"})
		}
	})
	t.Run("socks4 refused on the password address", func(t *testing.T) {
		// Not enabled there: closed without a reply, nothing dialled.
		_, _, code := curlHTTP(t, topo.C, "", "--socks4a", egHTTPListen, url)
		if code == 0 {
			t.Fatalf("curl --socks4a through %s (socks5, http only) succeeded", egHTTPListen)
		}
	})
	t.Run("curl http without credentials", func(t *testing.T) {
		out, _, code := curlHTTP(t, topo.C, proxyURL(egAnon, egAnonListen), url)
		if code != 0 || strings.TrimSpace(out) != seenWan2 {
			t.Fatalf("exit %d %q, want %q", code, out, seenWan2)
		}
	})
	t.Run("chromium http proxy", func(t *testing.T) {
		bin := chromiumPath(t)
		dom, stderr, err := chromiumDumpDOM(t, bin, topo.C, "http://"+egAnonListen, url+"page", 60*time.Second)
		if err != nil {
			t.Fatalf("chromium: %v\n%s", err, tail(stderr, 20))
		}
		if want := `<p id="seen">` + seenWan2 + `</p>`; !strings.Contains(dom, want) {
			t.Fatalf("chromium's DOM lacks %s:\n%s", want, dom)
		}
		line := od.waitFlow(t, 5*time.Second, func(m map[string]any) bool { return m["target"] == egTarget && m["protocol"] == "http" })
		wantFields(t, line, map[string]any{"user": "", "interface": "wan2", "status": float64(200)})
	})
}

// A password listener with socks4 is a configuration the daemon refuses
// to start with, naming the key.
func TestHTTPProxySOCKS4ConfigRefused(t *testing.T) {
	_, shared := getDaemon(t)
	path := filepath.Join(t.TempDir(), "ifsocks.toml")
	text := "[server]\nlisten = [\"127.0.0.1:0\"]\n" + userBlock(egFo, "") +
		"\n[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"socks5\", \"socks4\"]\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, errOut, err := nstest.Run(ctx, nil, shared.bin, "-config", path)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("daemon with socks4 on a password listener: %v, want a failed start\n%s%s", err, out, errOut)
	}
	if msg := out + errOut; !strings.Contains(msg, "listeners[0].protocols[1]") || !strings.Contains(msg, "socks4") {
		t.Errorf("error does not name the key and value:\n%s", msg)
	}
}

// egSilent(i) is an address on wan1's link that nobody answers ARP for:
// a dial there waits for the kernel to give up on ARP (about 3 s), so with
// connect_timeout = "1s" the dial times out first rather than failing
// with "host unreachable". Each attempt takes its own address: once the
// kernel has given up on one (its neighbour entry FAILED), the next dial
// to it fails at once.
func egSilent(i int) string { return net.JoinHostPort(fmt.Sprintf("10.233.1.%d", 77+i), "80") }

// A connect timeout is 504 with a one-line body for both HTTP CONNECT and
// plain forwarding, and the flow line's outcome is timeout.
func TestHTTPProxyConnectTimeout(t *testing.T) {
	topo := newEgressTopologyAs(t, "h13b")
	cfg := must(nstest.Config{Listen: []string{egHTTPListen}, Server: []string{`connect_timeout = "1s"`},
		Metrics: egMetrics, Extra: userBlock(egFo, `interface = "wan1"`)}.Text())
	od := startEgressDaemon(t, topo, cfg, egHTTPListen)
	for i, tunnel := range []bool{false, true} {
		mark := od.mark()
		code, body := curlStatus(t, topo.C, egFo, tunnel, "http://"+egSilent(i)+"/")
		line := od.waitLineSince(t, mark, "flow")
		if code != 504 {
			t.Errorf("tunnel %v: status %d, want 504 (flow line %v)", tunnel, code, line)
		}
		if !tunnel && body != "504 Gateway Timeout" {
			// curl does not show the body of a refused CONNECT.
			t.Errorf("tunnel %v: body %q, want the one line %q", tunnel, body, "504 Gateway Timeout")
		}
		wantFields(t, line, map[string]any{"user": egFo.Name, "interface": "wan1", "outcome": "timeout", "status": float64(504)})
	}
	t.Run("CONNECT body", func(t *testing.T) {
		// The refused CONNECT's own answer, read on a raw socket.
		mark := od.mark()
		out := python(t, topo.C, pyRawConnect, egHTTPListen, egFo.Name, egFo.Password, egSilent(2))
		head, body, _ := strings.Cut(out, "\r\n\r\n")
		// python trims the output's final newline; the length says it was there.
		if !strings.HasPrefix(head, "HTTP/1.1 504 ") || !strings.Contains(head, "\r\nContent-Length: 20\r\n") ||
			body != "504 Gateway Timeout" {
			t.Fatalf("answer %q, want 504 with the one-line body", out)
		}
		wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"protocol": "http-connect", "outcome": "timeout"})
	})
}

// pyRawConnect sends one CONNECT with Basic credentials and prints all the
// proxy sent until it closed or 10 s passed without a byte.
const pyRawConnect = `
import base64, socket, sys
proxy, user, pw, target = sys.argv[1:5]
host, port = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=20)
auth = base64.b64encode((user + ":" + pw).encode()).decode()
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n" % (target, target, auth)).encode())
s.settimeout(10)
data = b""
try:
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if n and len(rest) >= n[0]:
                break
except socket.timeout:
    pass
sys.stdout.write(data.decode())
`
