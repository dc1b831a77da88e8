//go:build linux

package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// httpUpstream is an origin server in U for the HTTP proxy tests, on
// 0.0.0.0:egHTTPUpPort (so on every service address of U). It counts the
// connections it accepts, which tells whether the proxy shared or reused
// an upstream connection.
//
//	GET /peer           the connection's peer, "IP:port"
//	GET /bytes?n=&seed= n bytes of seededStream(seed)
//	GET /ws             WebSocket echo
type httpUpstream struct {
	accepts atomic.Int64
	mu      sync.Mutex
	peers   map[string]int // requests per peer "IP:port"
}

const egHTTPUpPort = "8081"

func startHTTPUpstream(t *testing.T, topo *topology) *httpUpstream {
	t.Helper()
	l, err := nstest.ListenIn(topo.U, "tcp4", "0.0.0.0:"+egHTTPUpPort)
	if err != nil {
		t.Fatal(err)
	}
	up := &httpUpstream{peers: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /peer", func(w http.ResponseWriter, r *http.Request) {
		up.mu.Lock()
		up.peers[r.RemoteAddr]++
		up.mu.Unlock()
		fmt.Fprintln(w, r.RemoteAddr)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err1 := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, err2 := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		if err1 != nil || err2 != nil || n < 0 || n > 1<<31 {
			http.Error(w, "bad n or seed", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, seededStream(seed), n)
	})
	mux.Handle("GET /ws", websocket.Handler(func(c *websocket.Conn) {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.Copy(c, c)
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				up.accepts.Add(1)
			}
		}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return up
}

// peerCounts returns the requests per upstream peer so far.
//
//lint:ignore U1000 for the HTTP tests in progress (issue 13)
func (up *httpUpstream) peerCounts() map[string]int {
	up.mu.Lock()
	defer up.mu.Unlock()
	out := make(map[string]int, len(up.peers))
	for k, v := range up.peers {
		out[k] = v
	}
	return out
}
