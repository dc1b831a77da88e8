//go:build linux

package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
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
//	GET /stream         a chunked answer in pieces: streamHead, flushed;
//	                    then, once GET /release came (at most 10 s later),
//	                    streamRest(), flushed in two writes a pause apart
//	GET /release        lets /stream go on
//	POST /sum           "<hex sha256> <length> <transfer-encodings>" of the body
type httpUpstream struct {
	accepts  atomic.Int64
	mu       sync.Mutex
	peers    map[string]int // requests per peer "IP:port"
	release  chan struct{}  // closed by GET /release
	once     sync.Once
	released atomic.Bool // /stream saw the release before writing the rest
}

// streamHead is the first chunk of GET /stream.
const streamHead = "chunk-1 sent before the release\n"

// streamRest is what GET /stream writes after the release.
func streamRest() []byte {
	b := make([]byte, 64<<10)
	_, _ = io.ReadFull(seededStream(13), b)
	return append([]byte("chunk-2\n"), b...)
}

const egHTTPUpPort = "8081"

func startHTTPUpstream(t *testing.T, topo *topology) *httpUpstream {
	t.Helper()
	l, err := nstest.ListenIn(topo.U, "tcp4", "0.0.0.0:"+egHTTPUpPort)
	if err != nil {
		t.Fatal(err)
	}
	up := &httpUpstream{peers: map[string]int{}, release: make(chan struct{})}
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
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		// No Content-Length and flushes: net/http sends it chunked.
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, streamHead)
		_ = rc.Flush()
		select {
		case <-up.release:
			up.released.Store(true)
		case <-time.After(10 * time.Second):
			_, _ = io.WriteString(w, "no release came\n")
			return
		case <-r.Context().Done():
			return
		}
		rest := streamRest()
		_, _ = w.Write(rest[:8])
		_ = rc.Flush()
		time.Sleep(50 * time.Millisecond)
		_, _ = w.Write(rest[8:])
	})
	mux.HandleFunc("GET /release", func(w http.ResponseWriter, _ *http.Request) {
		up.once.Do(func() { close(up.release) })
		fmt.Fprintln(w, "released")
	})
	mux.HandleFunc("POST /sum", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d %s\n", h.Sum(nil), n, strings.Join(r.TransferEncoding, ","))
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

const egHTTPSPort = "8443"

// startHTTPSOrigin serves TLS on 0.0.0.0:egHTTPSPort in U, with a
// self-signed certificate made here for egSvc. GET /page answers an HTML
// page whose element "seen" holds the peer's address and "tls".
func startHTTPSOrigin(t *testing.T, topo *topology) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: egSvc},
		IPAddresses: []net.IP{net.ParseIP(egSvc)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := nstest.ListenIn(topo.U, "tcp4", "0.0.0.0:"+egHTTPSPort)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /page", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		tlsOn := "plain"
		if r.TLS != nil {
			tlsOn = "tls"
		}
		fmt.Fprintf(w, "<!doctype html><title>https origin</title><p id=\"seen\">%s %s</p>\n", host, tlsOn)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
}
