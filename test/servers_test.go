//go:build linux

package test

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// whoami is the HTTP service in U. It listens on sockets created inside U,
// so what it sees as the peer address is what left the proxy namespace.
type whoami struct {
	servers []*http.Server
}

func startWhoami(ns string) (*whoami, error) {
	mux := http.NewServeMux()
	// GET / answers the client's source IP; the heart of the egress tests.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, ap.Addr().Unmap())
	})
	// GET /bytes?n=N&seed=S streams N deterministic bytes (bulk download).
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err1 := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, err2 := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		if err := errors.Join(err1, err2); err != nil || n < 0 || n > 1<<32 {
			http.Error(w, "bad n or seed", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, seededStream(seed), n)
	})
	// POST /sink answers "<hex sha256> <length>" of the body (bulk upload).
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d\n", h.Sum(nil), n)
	})
	wh := &whoami{}
	for _, addr := range []string{net.JoinHostPort(svcV4, "8080"), net.JoinHostPort(svcV6, "8080")} {
		l, err := nstest.ListenIn(ns, "tcp", addr)
		if err != nil {
			wh.close()
			return nil, fmt.Errorf("whoami listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wh.servers = append(wh.servers, srv)
		go func() { _ = srv.Serve(l) }()
	}
	return wh, nil
}

func (wh *whoami) close() {
	for _, s := range wh.servers {
		_ = s.Close()
	}
}

// seededStream is the pseudo-random byte source shared by the server and
// the tests computing the expected checksum.
func seededStream(seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

// expectedSHA256 returns the hex sha256 of the first n bytes of the stream.
func expectedSHA256(seed uint64, n int64) string {
	h := sha256.New()
	_, _ = io.CopyN(h, seededStream(seed), n)
	return fmt.Sprintf("%x", h.Sum(nil))
}
