package socks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// Client behaviour after sending a malformed handshake.
const (
	halfClose = iota // shut down the write side: "that is all"
	stall            // send nothing more; the handshake timeout must end it
)

// malformedTimeout is the handshake timeout of TestMalformedHandshakes:
// short, since stalled clients wait for it.
const malformedTimeout = 500 * time.Millisecond

type malformedCase struct {
	name  string
	send  []byte
	after int
	// want is everything the server sends before it closes; check, when
	// set, replaces the comparison.
	want  []byte
	check func(tb testing.TB, got []byte)
}

// Pieces of handshakes. The server has users, so method 0x02.
var (
	mfGreeting   = []byte{5, 1, methodUserPass}
	mfMethodOK   = []byte{5, methodUserPass}
	mfAuthOK     = []byte{1, authStatusOK}
	mfAuthFailed = []byte{1, authStatusFailed}
)

func mfCat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func mfUserPass(u, p string) []byte {
	return mfCat([]byte{1, byte(len(u))}, []byte(u), []byte{byte(len(p))}, []byte(p))
}

func mfDomain(name string, port uint16) []byte {
	return mfCat([]byte{atypDomain, byte(len(name))}, []byte(name), []byte{byte(port >> 8), byte(port)})
}

// mfReply is a failure reply: no bound address (RFC 1928 section 6).
func mfReply(rep byte) []byte { return []byte{5, rep, 0, atypIPv4, 0, 0, 0, 0, 0, 0} }

// malformedCases lists one row per class of malformed handshake, then one
// per truncation point of two valid handshakes. echo is a target that
// accepts connections.
func malformedCases(echo netip.AddrPort) []malformedCase {
	login := mfCat(mfGreeting, mfUserPass("bob", bobPass))
	loggedIn := mfCat(mfMethodOK, mfAuthOK)
	req := func(cmd byte, addr []byte) []byte { return mfCat(login, []byte{5, cmd, 0}, addr) }
	ipv4 := appendAddr(nil, echo)
	rows := []malformedCase{
		{name: "greeting version 4", send: []byte{4, 1, 0}, after: halfClose},
		{name: "greeting version 4, stalled", send: []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, after: stall},
		{name: "greeting version 0", send: []byte{0, 1, 2}, after: stall},
		{name: "zero methods", send: []byte{5, 0}, after: stall, want: []byte{5, methodNoAccept}},
		{name: "no acceptable method", send: []byte{5, 3, 0, 1, 0x80}, after: stall, want: []byte{5, methodNoAccept}},
		{name: "more methods announced than sent", send: []byte{5, 3, 2}, after: halfClose},
		{name: "more methods announced than sent, stalled", send: []byte{5, 3, 2}, after: stall},
		{name: "silent client", after: stall},
		{name: "sub-negotiation version 5", send: mfCat(mfGreeting, []byte{5, 3}, []byte("bob"), []byte{2}, []byte("pw")),
			after: stall, want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "username length 0", send: mfCat(mfGreeting, mfUserPass("", bobPass)), after: stall, want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "password length 0", send: mfCat(mfGreeting, mfUserPass("bob", "")), after: stall, want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "username and password length 0", send: mfCat(mfGreeting, []byte{1, 0, 0}), after: stall, want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "wrong password", send: mfCat(mfGreeting, mfUserPass("bob", "nope")), after: stall, want: mfCat(mfMethodOK, mfAuthFailed)},
		// A cut sub-negotiation gets a failure status (RFC 1929 section 2)
		// when the client half-closes; when it stalls, the handshake
		// deadline, which covers writes too, leaves only the close.
		{name: "username longer than sent", send: mfCat(mfGreeting, []byte{1, 10}, []byte("bob")), after: halfClose,
			want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "username longer than sent, stalled", send: mfCat(mfGreeting, []byte{1, 10}, []byte("bob")), after: stall,
			want: mfMethodOK},
		{name: "password longer than sent", send: mfCat(mfGreeting, []byte{1, 3}, []byte("bob"), []byte{10}, []byte("bob")), after: halfClose,
			want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "password longer than sent, stalled", send: mfCat(mfGreeting, []byte{1, 3}, []byte("bob"), []byte{10}, []byte("bob")), after: stall,
			want: mfMethodOK},
		{name: "password length missing", send: mfCat(mfGreeting, []byte{1, 3}, []byte("bob")), after: halfClose,
			want: mfCat(mfMethodOK, mfAuthFailed)},
		{name: "no request after login", send: login, after: stall, want: loggedIn},
		{name: "request version 4", send: mfCat(login, []byte{4, cmdConnect, 0}, ipv4), after: stall, want: loggedIn},
		{name: "request truncated, stalled", send: mfCat(login, []byte{5, cmdConnect, 0, atypIPv4, 127}), after: stall, want: loggedIn},
		{name: "unknown command 0x00", send: req(0x00, ipv4), after: stall, want: mfCat(loggedIn, mfReply(RepCommandUnsupported))},
		{name: "unknown command 0x09", send: req(0x09, ipv4), after: stall, want: mfCat(loggedIn, mfReply(RepCommandUnsupported))},
		{name: "unknown command 0xff", send: req(0xff, ipv4), after: stall, want: mfCat(loggedIn, mfReply(RepCommandUnsupported))},
		{name: "address type 0x00", send: req(cmdConnect, []byte{0, 127, 0, 0, 1, 0, 80}), after: stall,
			want: mfCat(loggedIn, mfReply(RepAddrUnsupported))},
		{name: "address type 0x02", send: req(cmdConnect, []byte{2, 127, 0, 0, 1, 0, 80}), after: stall,
			want: mfCat(loggedIn, mfReply(RepAddrUnsupported))},
		{name: "address type 0xff", send: req(cmdConnect, []byte{0xff}), after: stall,
			want: mfCat(loggedIn, mfReply(RepAddrUnsupported))},
		{name: "domain length 0", send: req(cmdConnect, mfDomain("", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain only a dot", send: req(cmdConnect, mfDomain(".", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with NUL", send: req(cmdConnect, mfDomain("localhost\x00.evil", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with escape", send: req(cmdConnect, mfDomain("\x1b[31mlocalhost", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with space", send: req(cmdConnect, mfDomain("local host", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with slash", send: req(cmdConnect, mfDomain("localhost/x", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with high bytes", send: req(cmdConnect, mfDomain("l\xc3\xb6calhost", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain with empty label", send: req(cmdConnect, mfDomain("local..host", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain label of 64 bytes", send: req(cmdConnect, mfDomain(string(bytes.Repeat([]byte("a"), 64)), echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "domain of 255 bytes", send: req(cmdConnect, mfDomain(string(bytes.Repeat([]byte("a."), 127))+"a", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "zoned IPv6 literal as domain", send: req(cmdConnect, mfDomain("fe80::1%lo", echo.Port())), after: stall,
			want: mfCat(loggedIn, mfReply(RepHostUnreachable))},
		{name: "extra bytes after a refused request", send: mfCat(req(0x00, ipv4), []byte{5, cmdConnect, 0}, ipv4), after: stall,
			want: mfCat(loggedIn, mfReply(RepCommandUnsupported))},
		{name: "extra bytes after a refused request, half-closed", send: mfCat(req(0x09, ipv4), bytes.Repeat([]byte{0xff}, 2000)), after: halfClose,
			want: mfCat(loggedIn, mfReply(RepCommandUnsupported))},
		// Bytes after a CONNECT are data for the target (sent early, before
		// the reply), never a second request.
		{name: "extra bytes after CONNECT", send: mfCat(req(cmdConnect, ipv4), []byte{5, cmdConnect, 0}, ipv4), after: halfClose,
			check: func(tb testing.TB, got []byte) {
				tb.Helper()
				extra := mfCat([]byte{5, cmdConnect, 0}, ipv4)
				n := len(loggedIn) + len(mfReply(0))
				if len(got) != n+len(extra) || !bytes.Equal(got[:len(loggedIn)], loggedIn) ||
					!bytes.Equal(got[len(loggedIn):len(loggedIn)+4], []byte{5, RepSucceeded, 0, atypIPv4}) ||
					!bytes.Equal(got[n:], extra) {
					tb.Fatalf("got % x; want % x, a success reply, then the extra bytes echoed", got, loggedIn)
				}
			}},
	}
	rows = append(rows, truncations("IPv4 CONNECT", req(cmdConnect, ipv4), len(mfGreeting), len(login))...)
	rows = append(rows, truncations("domain CONNECT", req(cmdConnect, mfDomain("localhost", echo.Port())), len(mfGreeting), len(login))...)
	return rows
}

// truncations returns a row for every proper prefix of the valid handshake
// full, whose greeting ends at byte g and sub-negotiation at byte a, sent
// by a client that then half-closes. The server answers what it could read
// in full: the method after the greeting, a failure status for a cut
// sub-negotiation, the success status after it, and nothing for a cut
// request.
func truncations(what string, full []byte, g, a int) []malformedCase {
	var rows []malformedCase
	for n := range len(full) {
		var want []byte
		switch {
		case n < g:
		case n < a:
			want = mfCat(mfMethodOK, mfAuthFailed)
		default:
			want = mfCat(mfMethodOK, mfAuthOK)
		}
		rows = append(rows, malformedCase{
			name:  fmt.Sprintf("%s cut at %d of %d", what, n, len(full)),
			send:  full[:n],
			after: halfClose,
			want:  want,
		})
	}
	return rows
}

// TestMalformedHandshakes sends each malformed handshake over loopback
// TCP and checks the server's exact answer and that it closes within the
// handshake timeout; then that the server still serves a good client and
// that the connection's goroutines are gone.
func TestMalformedHandshakes(t *testing.T) {
	st := testSettings(t)
	st.HandshakeTimeout = malformedTimeout
	env := startServer(t, st)
	echo := echoServer(t)
	for _, tt := range malformedCases(echo) {
		t.Run(tt.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			c, err := net.DialTimeout("tcp", env.addr, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if len(tt.send) > 0 {
				if _, err := c.Write(tt.send); err != nil {
					t.Fatal(err)
				}
			}
			if tt.after == halfClose {
				c.(*net.TCPConn).CloseWrite()
			}
			got, err := readUntilClose(c, malformedTimeout+3*time.Second)
			if err != nil {
				t.Fatalf("after % x: got % x, then %v", tt.send, got, err)
			}
			if el := time.Since(start); el > malformedTimeout+2*time.Second {
				t.Errorf("closed after %v; handshake timeout %v", el, malformedTimeout)
			}
			switch {
			case tt.check != nil:
				tt.check(t, got)
			case !bytes.Equal(got, tt.want):
				t.Fatalf("after % x: server sent % x, want % x", tt.send, got, tt.want)
			}
			c.Close()
			goodClient(t, env, echo)
			waitFor(t, 5*time.Second, "connections closed", func() bool { return env.srv.ActiveConns() == 0 })
			waitGoroutines(t, base)
		})
	}
	if errs := env.logs.FilterLevelExact(zapcore.ErrorLevel); errs.Len() > 0 {
		t.Errorf("client mistakes logged as server errors: %v", errs.All())
	}
}

// readUntilClose reads until the server closes (EOF or reset) and returns
// what it sent; an error means the server had not closed within d.
func readUntilClose(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	var got []byte
	var b [4096]byte
	for {
		n, err := c.Read(b[:])
		got = append(got, b[:n]...)
		switch {
		case err == nil:
		case err == io.EOF, isReset(err) && !errors.Is(err, os.ErrDeadlineExceeded):
			return got, nil
		default:
			return got, err
		}
	}
}

// goodClient logs in as alice, connects to echo and sees one echo.
func goodClient(tb testing.TB, env *testEnv, echo netip.AddrPort) {
	tb.Helper()
	r := dialRaw(tb, env.addr)
	r.login("alice", alicePass)
	if rep, _ := r.connect(echo); rep != RepSucceeded {
		tb.Fatalf("good client after a malformed one: reply %#x", rep)
	}
	r.send('p', 'i', 'n', 'g')
	r.expect('p', 'i', 'n', 'g')
	r.c.Close()
}

// waitGoroutines waits up to 5s for the goroutine count to fall back to
// base, and fails with every goroutine's stack if it does not.
func waitGoroutines(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			tb.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
