package socks

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// startOrigin is an HTTP server on loopback answering "hello".
func startOrigin(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

// A kept-alive HTTP connection waiting for its next request carries no
// flow: Shutdown closes it at once instead of waiting out its grace.
func TestHTTPShutdownClosesIdle(t *testing.T) {
	st := testSettings(t)
	st.Protocols = ProtoSOCKS5 | ProtoHTTP
	e := startServer(t, st)
	origin := startOrigin(t)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	auth := base64.StdEncoding.EncodeToString([]byte("bob:" + bobPass))
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", origin, origin, auth)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello\n" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	// The server sees the connection idle once the answer is out.
	waitFor(t, 5*time.Second, "the connection to go idle", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		for sc := range e.srv.conns {
			if sc.active {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v, want the idle connection closed at once", err)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("client read %v after shutdown, want EOF", err)
	}
}

// A connection that closes, or stays silent past handshake_timeout, before
// its first byte is no HTTP request: no answer, only a debug line.
func TestNoFirstByte(t *testing.T) {
	st := testSettings(t)
	st.Protocols = ProtoSOCKS5 | ProtoHTTP
	st.HandshakeTimeout = 300 * time.Millisecond
	e := startServer(t, st)
	for _, silent := range []bool{false, true} {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if !silent {
			c.(*net.TCPConn).CloseWrite()
		}
		got, err := io.ReadAll(c)
		c.Close()
		if len(got) != 0 || (err != nil && !isReset(err)) {
			t.Errorf("silent %v: server sent %q (%v), want a plain close", silent, got, err)
		}
	}
	waitFor(t, 5*time.Second, "both connections to end", func() bool { return e.srv.ActiveConns() == 0 })
	for _, l := range e.logs.All() {
		if l.Level > zapcore.DebugLevel {
			t.Errorf("%s line %q: want debug only", l.Level, l.Message)
		}
	}
}
