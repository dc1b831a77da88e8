package socks

import (
	"bytes"
	"encoding/base64"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/bind"
)

// FuzzServeMixed is FuzzServeConn on a listen address that serves every
// protocol, so the first-byte sniffing and the HTTP request head are fuzzed
// too. Every egress is an interface that does not exist, so no input can
// make the server resolve a name or dial: each flow ends at the egress
// plan (HTTP forwarding) or, over the pipe, before the dial (CONNECT).
//
// What the server sends must follow the protocol the first byte names:
// SOCKS5 as wantServerBytes says; SOCKS4 nothing for an incomplete request,
// else exactly one rejection (90 is impossible without a dial); HTTP only
// whole status lines of refusals — never a 2xx or 3xx, and with users
// never anything but 407 and request-form errors for a request without
// valid credentials.
func FuzzServeMixed(f *testing.F) {
	settings := [2]*Settings{mixedServeSettings(f, false), mixedServeSettings(f, true)}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		withAuth := in[0]&1 == 1
		stream := in[1:]
		got, logs := serveOverPipe(t, settings[in[0]&1], stream)
		switch {
		case len(stream) == 0:
			if len(got) != 0 {
				t.Fatalf("server sent % x to a client that sent nothing", got)
			}
		case stream[0] == socks5Version:
			if want := wantServerBytes(stream, withAuth); !bytes.Equal(got, want) {
				t.Fatalf("auth %v, client sent % x\nserver sent % x\nwant        % x", withAuth, stream, got, want)
			}
		case stream[0] == socks4Version:
			want := []byte(nil)
			if socks4Complete(stream) {
				want = []byte{0, socks4Rejected, 0, 0, 0, 0, 0, 0}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("SOCKS4 % x: server sent % x, want % x", stream, got, want)
			}
		default:
			checkHTTPAnswers(t, stream, got, withAuth)
		}
		if i := unsafeLogIndex(logs); i >= 0 {
			t.Fatalf("non-printable character in log output at %d: %q", i, logs)
		}
	})
}

func mixedServeSettings(tb testing.TB, withAuth bool) *Settings {
	st := fuzzServeSettings(tb, withAuth)
	st.Protocols = ProtoSOCKS5 | ProtoHTTP | ProtoSOCKS4
	nowhere := Egress{Interfaces: []string{"fuzz0"}}
	st.NoAuthUser = User{Egress: nowhere}
	for name := range st.Users {
		st.Users[name] = User{Egress: nowhere}
	}
	st.CheckInterface = func(name string) error {
		return &bind.Error{Interface: name, Err: bind.ErrNoInterface}
	}
	return st
}

// socks4Complete reports whether stream holds a whole SOCKS4/4a request:
// 8 bytes, a user id ended by NUL within 256 bytes, and for 4a a host
// name ended likewise.
func socks4Complete(stream []byte) bool {
	if len(stream) < 8 {
		return false
	}
	rest := stream[8:]
	nul := func() bool {
		i := bytes.IndexByte(rest, 0)
		if i < 0 || i > socks4MaxField {
			return false
		}
		rest = rest[i+1:]
		return true
	}
	if !nul() {
		return false
	}
	if stream[4] == 0 && stream[5] == 0 && stream[6] == 0 && stream[7] != 0 {
		return nul()
	}
	return true
}

var statusLine = regexp.MustCompile(`(?m)^HTTP/1\.[01] (\d{3}) `)

// checkHTTPAnswers checks what the server sent to an HTTP client.
func checkHTTPAnswers(t *testing.T, stream, got []byte, withAuth bool) {
	t.Helper()
	if len(got) > 0 && !bytes.HasPrefix(got, []byte("HTTP/1.")) {
		t.Fatalf("client sent %q\nserver sent %q, not an HTTP response", stream, got)
	}
	creds := false
	for _, c := range []string{fuzzUser + ":" + fuzzPass, fuzzHashUser + ":" + fuzzHashPass} {
		if bytes.Contains(stream, []byte(base64.StdEncoding.EncodeToString([]byte(c)))) {
			creds = true
		}
	}
	for _, m := range statusLine.FindAllSubmatch(got, -1) {
		code, _ := strconv.Atoi(string(m[1]))
		switch {
		case code < 400:
			t.Fatalf("client sent %q\nserver answered %d: nothing can succeed here", stream, code)
		case withAuth && !creds && !requestFormError(code):
			t.Fatalf("client sent %q without credentials\nserver answered %d, want 407 or a request-form error", stream, code)
		}
	}
	if len(got) > 0 && len(statusLine.FindAll(got, -1)) == 0 {
		t.Fatalf("server sent %q: no status line", got)
	}
}

// requestFormError: statuses net/http or the proxy give a request before
// looking at its credentials.
func requestFormError(code int) bool {
	switch code {
	case 400, 405, 407, 417, 431, 501, 505:
		return true
	}
	return false
}

// mixedSeeds are the committed seeds of FuzzServeMixed.
func mixedSeeds() map[string][]byte {
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(fuzzUser+":"+fuzzPass)) + "\r\n"
	seeds := map[string][]byte{
		"http-get-absolute":     []byte("GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n"),
		"http-get-origin":       []byte("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
		"http-connect":          []byte("CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"),
		"http-connect-early":    []byte("CONNECT 192.0.2.7:443 HTTP/1.1\r\n\r\n\x16\x03\x01"),
		"http-connect-noport":   []byte("CONNECT example.org HTTP/1.1\r\n\r\n"),
		"http-trace":            []byte("TRACE http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n"),
		"http-https-absolute":   []byte("GET https://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n"),
		"http-head-only":        []byte("GET http://example.org/ HTTP/1.1\r\nHost: exa"),
		"http-garbage":          []byte("\x00\x01\x02\r\n\r\n"),
		"http-keepalive-two":    []byte("GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\nGET http://b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"),
		"http-big-header":       []byte("GET http://example.org/ HTTP/1.1\r\nX: " + strings.Repeat("a", 17<<10) + "\r\n\r\n"),
		"http-post-chunked":     []byte("POST http://example.org/ HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
		"http-bad-basic":        []byte("GET http://example.org/ HTTP/1.1\r\nProxy-Authorization: Basic !!!\r\n\r\n"),
		"http-creds-get":        []byte("GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n" + auth + "\r\n"),
		"http-creds-connect":    []byte("CONNECT example.org:443 HTTP/1.1\r\n" + auth + "\r\n"),
		"http-http10":           []byte("GET http://example.org/ HTTP/1.0\r\n\r\n"),
		"socks4-connect":        {4, 1, 0, 80, 192, 0, 2, 7, 'u', 0},
		"socks4a-connect":       append([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, "example.org\x00"...),
		"socks4a-bad-name":      append([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, "a\x1b.org\x00"...),
		"socks4-bind":           {4, 2, 0, 80, 192, 0, 2, 7, 0},
		"socks4-userid-no-nul":  append([]byte{4, 1, 0, 80, 192, 0, 2, 7}, strings.Repeat("u", 300)...),
		"socks4-short":          {4, 1, 0},
		"socks5-noauth-connect": {5, 1, 0, 5, 1, 0, atypIPv4, 192, 0, 2, 7, 0, 80},
	}
	out := map[string][]byte{}
	for name, s := range seeds {
		out["noauth-"+name] = append([]byte{0}, s...)
		out["auth-"+name] = append([]byte{1}, s...)
	}
	return out
}
