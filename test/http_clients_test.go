//go:build linux

package test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// Python clients of the HTTP proxy: the standard library's http.client
// (several requests on one connection; CONNECT with set_tunnel), urllib,
// and a WebSocket upgrade written on a plain socket.

const pyKeepAlive = `
import base64, http.client, json, sys
proxy, user, pw = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = proxy.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=20)
hdr = {}
if user:
    hdr["Proxy-Authorization"] = "Basic " + base64.b64encode((user + ":" + pw).encode()).decode()
out = []
for u in sys.argv[4:]:
    c.request("GET", u, headers=hdr)
    r = c.getresponse()
    body = r.read().decode().strip()
    local = "%s:%d" % c.sock.getsockname() if c.sock else ""
    out.append({"status": r.status, "local": local, "body": body, "via": r.getheader("Via") or ""})
print(json.dumps(out))
`

const pyTunnel = `
import base64, http.client, sys
proxy, user, pw, target = sys.argv[1:5]
host, port = proxy.rsplit(":", 1)
thost, tport = target.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=20)
c.set_tunnel(thost, int(tport), headers={"Proxy-Authorization": "Basic " + base64.b64encode((user + ":" + pw).encode()).decode()})
c.request("GET", "/")
r = c.getresponse()
print(r.status, r.read().decode().strip())
`

const pyURLLib = `
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": sys.argv[1]}))
print(opener.open(sys.argv[2], timeout=20).read().decode().strip())
`

// pyWebSocket upgrades through the proxy by hand (RFC 6455: the key, a
// masked client frame) and prints what the echo server sent back.
const pyWebSocket = `
import base64, hashlib, os, socket, sys
proxy, user, pw, target = sys.argv[1:5]
host, port = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=20)
key = base64.b64encode(os.urandom(16)).decode()
auth = base64.b64encode((user + ":" + pw).encode()).decode()
s.sendall(("GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n"
           "Proxy-Authorization: Basic %s\r\n\r\n" % (target, target, key, target, auth)).encode())
head = b""
while b"\r\n\r\n" not in head:
    b = s.recv(1)
    if not b:
        sys.exit("closed during the handshake: %r" % head)
    head += b
lines = head.decode().split("\r\n")
if " 101 " not in lines[0]:
    sys.exit("no upgrade: %r" % head)
want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
if hdrs.get("sec-websocket-accept") != want:
    sys.exit("bad accept: %r" % head)
msg = b"hello through ifsocks"
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(msg)))
hdr = s.recv(2)
n = hdr[1] & 0x7f
data = b""
while len(data) < n:
    data += s.recv(n - len(data))
print(data.decode())
`

// python runs a script in ns and returns its output.
func python(t *testing.T, ns, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errOut, err := nstest.Run(ctx, nil, "ip", append([]string{"netns", "exec", ns, "/usr/bin/python3", "-c", script}, args...)...)
	if err != nil {
		t.Fatalf("python %v: %v\n%s", args, err, errOut)
	}
	return strings.TrimSpace(out)
}

type pyAnswer struct {
	Status int    `json:"status"`
	Local  string `json:"local"`
	Body   string `json:"body"`
	Via    string `json:"via"`
}

func keepAlive(t *testing.T, ns string, u nstest.User, urls ...string) []pyAnswer {
	t.Helper()
	out := python(t, ns, pyKeepAlive, append([]string{egHTTPListen, u.Name, u.Password}, urls...)...)
	var got []pyAnswer
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != len(urls) {
		t.Fatalf("python printed %q (%v), want %d answers", out, err, len(urls))
	}
	return got
}

func TestHTTPProxyPython(t *testing.T) {
	topo := newEgressTopology(t)
	startEgressWhoami(t, topo)
	up := startHTTPUpstream(t, topo)
	cfg := egressConfig([]string{egHTTPListen},
		userBlock(egFo, `interface = "wan1"`)+
			userBlock(egRR, `interface = "wan1"`)+
			userBlock(egSid, `interface = "wan2"`))
	od := startEgressDaemon(t, topo, cfg, egHTTPListen)
	peer := func(i int) string { return "http://" + net.JoinHostPort(egSvcAddr(i), egHTTPUpPort) + "/peer" }

	t.Run("keep-alive to two hosts", func(t *testing.T) {
		// One client connection, three requests to two hosts; all
		// leave by sid's NIC, and the requests to one host share an
		// upstream connection.
		got := keepAlive(t, topo.C, egSid, peer(0), peer(1), peer(0))
		for i, a := range got {
			if a.Status != 200 || !strings.HasPrefix(a.Body, egWan2+":") {
				t.Errorf("request %d: %d %q, want 200 from %s (wan2)", i, a.Status, a.Body, egWan2)
			}
			if a.Local != got[0].Local {
				t.Errorf("request %d went on client connection %s, the first on %s: not kept alive", i, a.Local, got[0].Local)
			}
			if a.Via != "1.1 ifsocks" {
				t.Errorf("request %d: Via %q, want 1.1 ifsocks", i, a.Via)
			}
		}
		if got[0].Body != got[2].Body {
			t.Errorf("two requests to one host on one client connection used upstream %s and %s", got[0].Body, got[2].Body)
		}
	})

	t.Run("no sharing between users or connections", func(t *testing.T) {
		before := up.accepts.Load()
		fo := keepAlive(t, topo.C, egFo, peer(2), peer(2))
		rr := keepAlive(t, topo.C, egRR, peer(2), peer(2))
		fo2 := keepAlive(t, topo.C, egFo, peer(2))
		// fo and rr both leave by wan1, to the same host: only the
		// proxy's rule keeps them apart. Three client connections, so
		// three upstream connections, each reused within its client
		// connection.
		if n := up.accepts.Load() - before; n != 3 {
			t.Errorf("upstream accepted %d connections, want 3 (one per client connection)", n)
		}
		for name, a := range map[string][]pyAnswer{"fo": fo, "rr": rr} {
			if a[0].Body != a[1].Body || !strings.HasPrefix(a[0].Body, egWan1+":") {
				t.Errorf("%s: upstream peers %q and %q, want one connection from %s", name, a[0].Body, a[1].Body, egWan1)
			}
		}
		if fo[0].Body == rr[0].Body || fo2[0].Body == fo[0].Body || fo2[0].Body == rr[0].Body {
			t.Errorf("an upstream connection was shared: fo %s, rr %s, fo again %s", fo[0].Body, rr[0].Body, fo2[0].Body)
		}
	})

	t.Run("urllib", func(t *testing.T) {
		if got := python(t, topo.C, pyURLLib, proxyURL(egSid, egHTTPListen), "http://"+egTarget+"/"); got != seenWan2 {
			t.Errorf("urllib got %q, want %q", got, seenWan2)
		}
	})

	t.Run("http.client CONNECT", func(t *testing.T) {
		mark := od.mark()
		if got := python(t, topo.C, pyTunnel, egHTTPListen, egFo.Name, egFo.Password, egTarget); got != "200 "+seenWan1 {
			t.Errorf("tunnel got %q, want 200 %s", got, seenWan1)
		}
		wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"protocol": "http-connect", "user": egFo.Name, "interface": "wan1"})
	})

	t.Run("websocket", func(t *testing.T) {
		mark := od.mark()
		target := net.JoinHostPort(egSvc, egHTTPUpPort)
		if got := python(t, topo.C, pyWebSocket, egHTTPListen, egSid.Name, egSid.Password, target); got != "hello through ifsocks" {
			t.Errorf("websocket echo %q", got)
		}
		line := od.waitLineSince(t, mark, "flow")
		wantFields(t, line, map[string]any{"protocol": "http", "method": "GET", "status": float64(101), "interface": "wan2"})
	})
}
