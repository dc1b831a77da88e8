package httpproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// testBackend is a Backend that dials loopback for everyone and records
// what the proxy asked of it. The real one (package socks) is tested end to
// end in test/.
type testBackend struct {
	mu        sync.Mutex
	logins    []string
	exchanges []Exchange
	dials     int
	early     string
}

func (b *testBackend) Started() {}

func (b *testBackend) Idle() {}

func (b *testBackend) Login(user, pass string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logins = append(b.logins, user)
	if user == "alice" && pass == "pässword" {
		return nil
	}
	return errors.New("bad credentials")
}

func (b *testBackend) Connect(user, target string, rep Reply) bool {
	if target == "early.test:1" {
		early, err := rep.Establish()
		b.mu.Lock()
		b.early = string(early)
		b.mu.Unlock()
		return err == nil && false
	}
	rep.Refuse(http.StatusForbidden, "")
	return false
}

func (b *testBackend) Admit(user, target, method string, rep Reply) bool { return true }

func (b *testBackend) Dial(ctx context.Context, user, addr string) (net.Conn, error) {
	b.mu.Lock()
	b.dials++
	b.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (b *testBackend) Status(err error) int { return http.StatusBadGateway }

func (b *testBackend) Forwarded(ex *Exchange) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.exchanges = append(b.exchanges, *ex)
}

// serveOne accepts one connection on a loopback listener and serves it
// with Serve; it returns the proxy's address.
func serveOne(t *testing.T, b Backend, opt Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		if !Serve(c, nil, opt, b) {
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the client left")
		}
	})
	return ln.Addr().String()
}

// origin echoes the request headers it got, one "Name: value" a line.
func origin(t *testing.T) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Drop")
		w.Header().Set("X-Drop", "1")
		for k, v := range r.Header {
			fmt.Fprintf(w, "%s: %s\n", k, strings.Join(v, ","))
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, req string) (*http.Response, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestForwardHeaders(t *testing.T) {
	b := &testBackend{}
	up := origin(t)
	proxy := serveOne(t, b, Options{HeaderTimeout: 5 * time.Second, AuthRequired: true})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	auth := aliceAuth
	req := "GET http://" + up + "/ HTTP/1.1\r\nHost: " + up + "\r\n" + auth +
		"Connection: X-Hop\r\nX-Hop: 1\r\nProxy-Connection: keep-alive\r\nProxy-Foo: 2\r\nKeep-Alive: 5\r\nX-Keep: 3\r\n\r\n"
	resp, body := roundTrip(t, c, br, req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	for _, gone := range []string{"X-Hop", "Proxy-", "Keep-Alive", "Connection"} {
		if strings.Contains(body, gone) {
			t.Errorf("origin got %q:\n%s", gone, body)
		}
	}
	for _, kept := range []string{"X-Keep: 3", "Via: 1.1 ifsocks"} {
		if !strings.Contains(body, kept) {
			t.Errorf("origin lacks %q:\n%s", kept, body)
		}
	}
	if resp.Header.Get("X-Drop") != "" || resp.Header.Get("Via") != "1.1 ifsocks" {
		t.Errorf("answer headers %v: want X-Drop removed and Via added", resp.Header)
	}
	// The same connection, a second request: kept alive, same user.
	resp, _ = roundTrip(t, c, br, req)
	if resp.StatusCode != 200 {
		t.Errorf("second request: %d", resp.StatusCode)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.exchanges) != 2 || b.exchanges[0].User != "alice" || b.exchanges[0].Status != 200 || b.exchanges[0].Down == 0 {
		t.Errorf("exchanges %+v, want two of alice with status 200 and bytes", b.exchanges)
	}
	if b.dials != 1 {
		t.Errorf("%d upstream dials for two requests to one origin, want 1", b.dials)
	}
}

func TestStatuses(t *testing.T) {
	auth := aliceAuth
	tests := []struct {
		name, req string
		auth      bool
		want      int
		header    string // a header the answer must have, "Name: value"
	}{
		{"origin form", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, ""},
		{"https absolute", "GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, ""},
		{"trace", "TRACE http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", false, 405, "Allow"},
		{"connect without port", "CONNECT x HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, ""},
		{"no credentials", "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", true, 407, `Proxy-Authenticate: Basic realm="ifsocks", charset="UTF-8"`},
		{"wrong password", "GET http://x/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic " +
			base64.StdEncoding.EncodeToString([]byte("alice:nope")) + "\r\n\r\n", true, 407, ""},
		{"not basic", "GET http://x/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer abc\r\n\r\n", true, 407, ""},
		{"connect refused by the core", "CONNECT x:443 HTTP/1.1\r\n" + auth + "\r\n", true, 403, ""},
		{"head just under 16 KiB", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 15<<10) + "\r\n\r\n", false, 400, ""},
		{"head over 16 KiB", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 16<<10) + "\r\n\r\n", false, 431, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := serveOne(t, &testBackend{}, Options{HeaderTimeout: 5 * time.Second, AuthRequired: tt.auth})
			c, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			resp, body := roundTrip(t, c, bufio.NewReader(c), tt.req)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tt.want)
			}
			if tt.header != "" {
				name, value, _ := strings.Cut(tt.header, ": ")
				if got := resp.Header.Get(name); got == "" || (value != "" && got != value) {
					t.Errorf("%s: %q, want %q", name, got, value)
				}
			}
			if strings.Count(body, "\n") > 1 {
				t.Errorf("body %q: want one line", body)
			}
		})
	}
}

// A silent client is cut at HeaderTimeout, and Serve returns.
func TestHeaderTimeout(t *testing.T) {
	proxy := serveOne(t, &testBackend{}, Options{HeaderTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://x/ HTTP/1.1\r\nHost:")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("read: %v, want the server's close", err)
	}
}

func TestParseBasic(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		h          string
		user, pass string
		ok         bool
	}{
		{"Basic " + enc("alice:pw"), "alice", "pw", true},
		{"basic " + enc("alice:pw:with:colons"), "alice", "pw:with:colons", true},
		{"BASIC " + enc("ünïcode:pässword"), "ünïcode", "pässword", true},
		{"Basic " + enc(":"), "", "", true},
		{"Basic " + enc("nocolon"), "", "", false},
		{"Basic !!!", "", "", false},
		{"Bearer " + enc("a:b"), "", "", false},
		{"", "", "", false},
		{"Basic", "", "", false},
	}
	for _, tt := range tests {
		u, p, ok := parseBasic(tt.h)
		if u != tt.user || p != tt.pass || ok != tt.ok {
			t.Errorf("parseBasic(%q) = %q, %q, %v; want %q, %q, %v", tt.h, u, p, ok, tt.user, tt.pass, tt.ok)
		}
	}
}

// FuzzParseBasic: any user without ':' and any password survive the round
// trip, and no header makes it panic.
func FuzzParseBasic(f *testing.F) {
	f.Add("alice", "pw", "Basic YWxpY2U6cHc=")
	f.Add("", "", "basic Og==")
	f.Add("ü", "\x00", "Basic !!")
	f.Fuzz(func(t *testing.T, user, pass, raw string) {
		parseBasic(raw)
		if strings.Contains(user, ":") {
			return
		}
		u, p, ok := parseBasic("Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
		if !ok || u != user || p != pass {
			t.Fatalf("round trip of %q:%q gave %q:%q %v", user, pass, u, p, ok)
		}
	})
}

// A refused CONNECT (the fast path's 407) leaves the connection to the
// server: the retry with credentials and a GET on the same connection are
// answered; the bytes a client sends right after its CONNECT head reach
// the tunnel.
func TestConnectThenMore(t *testing.T) {
	b := &testBackend{}
	up := origin(t)
	proxy := serveOne(t, b, Options{HeaderTimeout: 5 * time.Second, AuthRequired: true})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	auth := aliceAuth
	for i, step := range []struct {
		req  string
		want int
	}{
		{"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n", 407},
		{"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n" + auth + "\r\n", 403},
		{"GET http://" + up + "/ HTTP/1.1\r\nHost: " + up + "\r\n" + auth + "\r\n", 200},
	} {
		resp, body := roundTrip(t, c, br, step.req)
		if resp.StatusCode != step.want {
			t.Fatalf("step %d: %d %q, want %d", i, resp.StatusCode, body, step.want)
		}
	}

	proxy = serveOne(t, b, Options{HeaderTimeout: 5 * time.Second})
	c2, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c2, "CONNECT early.test:1 HTTP/1.1\r\n\r\n\x16\x03\x01early bytes")
	line, _ := bufio.NewReader(c2).ReadString('\n')
	if line != "HTTP/1.1 200 Connection established\r\n" {
		t.Fatalf("answer %q", line)
	}
	// The backend notes the bytes once Establish has returned, after
	// the 200 went out.
	var early string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b.mu.Lock()
		early = b.early
		b.mu.Unlock()
		if early != "" {
			break
		}
	}
	if early != "\x16\x03\x01early bytes" {
		t.Errorf("early data %q, want the bytes sent after the head", early)
	}
}

// A kept-alive connection is closed after IdleTimeout without a request.
func TestIdleTimeout(t *testing.T) {
	b := &testBackend{}
	up := origin(t)
	proxy := serveOne(t, b, Options{HeaderTimeout: 5 * time.Second, IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	resp, _ := roundTrip(t, c, br, "GET http://"+up+"/ HTTP/1.1\r\nHost: "+up+"\r\n\r\n")
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status %d close %v, want a kept-alive 200", resp.StatusCode, resp.Close)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read on the idle connection: %v, want EOF (closed by the idle timeout)", err)
	}
}

// aliceAuth is the request header line with alice's credentials (a
// non-ASCII password, sent as UTF-8).
var aliceAuth = "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pässword")) + "\r\n"
