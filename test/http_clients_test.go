//go:build linux

package test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
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

// pyStream reads GET /stream through the proxy: the first line, then
// GET /release on a second connection, then the rest. A proxy that held
// the answer back until the origin finished would show the first line
// only after the origin gave up waiting for the release.
const pyStream = `
import base64, hashlib, http.client, json, sys
proxy, user, pw, target = sys.argv[1:5]
host, port = proxy.rsplit(":", 1)
hdr = {"Proxy-Authorization": "Basic " + base64.b64encode((user + ":" + pw).encode()).decode()}
c = http.client.HTTPConnection(host, int(port), timeout=30)
c.request("GET", "http://%s/stream" % target, headers=hdr)
r = c.getresponse()
first = r.readline()
c2 = http.client.HTTPConnection(host, int(port), timeout=30)
c2.request("GET", "http://%s/release" % target, headers=hdr)
rel = c2.getresponse().read()
rest = r.read()
print(json.dumps({"status": r.status, "te": r.getheader("Transfer-Encoding") or "", "first": first.decode(),
                  "release": rel.decode().strip(), "sha": hashlib.sha256(rest).hexdigest(), "len": len(rest)}))
`

// pyChunkedPost POSTs a body given as a generator (http.client sends it
// with Transfer-Encoding: chunked, one chunk a piece) and prints the
// origin's answer, then the body's own sha256 and length.
const pyChunkedPost = `
import base64, hashlib, http.client, sys
proxy, user, pw, target = sys.argv[1:5]
host, port = proxy.rsplit(":", 1)
pieces = [bytes((i * 31 + j) % 251 for j in range(n)) for i, n in enumerate([1, 1000, 70000, 5, 32768])]
def gen():
    for p in pieces:
        yield p
c = http.client.HTTPConnection(host, int(port), timeout=30)
c.request("POST", "http://%s/sum" % target, body=gen(), encode_chunked=True, headers={
    "Transfer-Encoding": "chunked",
    "Proxy-Authorization": "Basic " + base64.b64encode((user + ":" + pw).encode()).decode()})
r = c.getresponse()
whole = b"".join(pieces)
print(r.status, r.read().decode().strip(), "|", hashlib.sha256(whole).hexdigest(), len(whole))
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

	t.Run("chunked streaming", func(t *testing.T) {
		// The first chunk reaches the client while the origin still
		// waits for the release the client sends only after reading it.
		out := python(t, topo.C, pyStream, egHTTPListen, egSid.Name, egSid.Password, net.JoinHostPort(egSvc, egHTTPUpPort))
		var got struct {
			Status       int
			TE           string
			First        string
			Release, SHA string
			Len          int
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("python printed %q: %v", out, err)
		}
		rest := streamRest()
		want := fmt.Sprintf("%x", sha256.Sum256(rest))
		if got.Status != 200 || got.TE != "chunked" || got.First != streamHead || got.Release != "released" {
			t.Errorf("got %+v, want 200, chunked, first line %q, released", got, streamHead)
		}
		if !up.released.Load() {
			t.Errorf("the origin wrote the rest without the release: the client saw chunk 1 only once the origin had finished")
		}
		if got.SHA != want || got.Len != len(rest) {
			t.Errorf("rest of the body: %d bytes sha256 %s, want %d bytes %s", got.Len, got.SHA, len(rest), want)
		}
	})

	t.Run("chunked request body", func(t *testing.T) {
		mark := od.mark()
		out := python(t, topo.C, pyChunkedPost, egHTTPListen, egFo.Name, egFo.Password, net.JoinHostPort(egSvc, egHTTPUpPort))
		origin, client, _ := strings.Cut(out, " | ")
		f := strings.Fields(origin)
		if len(f) != 4 || f[0] != "200" || f[1]+" "+f[2] != client || f[3] != "chunked" {
			t.Fatalf("got %q, want 200, the origin's sum equal to the client's, chunked", out)
		}
		wantFields(t, od.waitLineSince(t, mark, "flow"), map[string]any{"protocol": "http", "method": "POST", "status": float64(200), "interface": "wan1"})
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
