//go:build linux

package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// curlExitProxy is CURLE_PROXY (97): curl >= 7.73 reports every SOCKS
// handshake failure (auth rejected, no method, CONNECT refused) with it.
const curlExitProxy = 97

type curlOpts struct {
	user, pass string // empty user: no -U, curl offers only "no auth"
	proxy      string // default proxyListen4
	hostname   bool   // --socks5-hostname (proxy resolves) vs --socks5
	maxTime    int    // seconds; default 20
	extra      []string
}

type curlResult struct {
	stdout, stderr string
	exit           int // 0 on success, -1 if curl did not run/finish
}

// curlIn runs curl in the client namespace against url through the proxy.
func curlIn(tb testing.TB, ns string, o curlOpts, url string) curlResult {
	tb.Helper()
	if o.proxy == "" {
		o.proxy = proxyListen4
	}
	if o.maxTime == 0 {
		o.maxTime = 20
	}
	flag := "--socks5"
	if o.hostname {
		flag = "--socks5-hostname"
	}
	// -g: no URL globbing, "[fd31:9::9]" is an address, not a range.
	args := []string{"netns", "exec", ns, "curl", "-sS", "-g", "--max-time", strconv.Itoa(o.maxTime), flag, o.proxy}
	if o.user != "" {
		args = append(args, "-U", o.user+":"+o.pass)
	}
	args = append(append(args, o.extra...), url)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(o.maxTime+30)*time.Second)
	defer cancel()
	out, errOut, err := nstest.Run(ctx, nil, "ip", args...)
	res := curlResult{stdout: out, stderr: errOut}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		res.exit = ee.ExitCode()
	default:
		res.exit = -1
		tb.Errorf("curl %s: %v", url, err)
	}
	return res
}

// curlOK runs curl and fails the test unless it succeeds; returns the body.
func curlOK(tb testing.TB, ns string, o curlOpts, url string) string {
	tb.Helper()
	r := curlIn(tb, ns, o, url)
	if r.exit != 0 {
		tb.Fatalf("curl as %q %s: exit %d, stderr %q", o.user, url, r.exit, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// goHTTPGet fetches url through the proxy with golang.org/x/net/proxy; the
// forward dialer creates its sockets in the client namespace. Safe to call
// from any goroutine (reports errors instead of failing a test).
func goHTTPGet(ctx context.Context, ns, proxyAddr, user, pass, url string) (string, error) {
	d, err := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: user, Password: pass},
		nstest.Dialer{NS: ns, Timeout: 5 * time.Second})
	if err != nil {
		return "", err
	}
	cd, ok := d.(proxy.ContextDialer)
	if !ok {
		return "", errors.New("x/net/proxy dialer lacks DialContext")
	}
	tr := &http.Transport{DialContext: cd.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: status %s", url, resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}

// pySocksScript fetches "/" over a PySocks SOCKS5 socket with remote DNS
// (rdns=True: the name goes to the proxy) and prints the HTTP body.
const pySocksScript = `
import socks, sys
proxy_host, proxy_port, user, pw, host, port = sys.argv[1:7]
s = socks.socksocket()
s.set_proxy(socks.SOCKS5, proxy_host, int(proxy_port), rdns=True, username=user, password=pw)
s.settimeout(15)
s.connect((host, int(port)))
s.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
    sys.exit("bad response: %r" % head)
sys.stdout.write(body.decode())
`

// pythonGet runs Debian's python3 (which has python3-socks; the pyenv
// python on PATH does not) in the client namespace.
func pythonGet(tb testing.TB, ns, user, pass, host, port string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _, err := nstest.Run(ctx, nil, "ip", "netns", "exec", ns, "/usr/bin/python3", "-c", pySocksScript,
		proxyV4, "1080", user, pass, host, port)
	if err != nil {
		tb.Fatalf("python3-socks as %q to %s:%s: %v", user, host, port, err)
	}
	return strings.TrimSpace(out)
}
