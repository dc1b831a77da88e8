package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// authhookCmd serves an ifsocks HTTP auth hook ([auth] backend = "http")
// for the connection test with hook users: it accepts -user with -pass,
// egress -interface, refuses the rest, and reports on exit how many
// requests it answered (with the cache, one per distinct login).
func authhookCmd(args []string) error {
	fs := flag.NewFlagSet("authhook", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9009", "address to listen on")
	user := fs.String("user", "bench", "the user accepted")
	pass := fs.String("pass", "", "its password")
	iface := fs.String("interface", "wan2", "its egress interface")
	life := fs.Duration("lifetime", 2*time.Hour, "exit after this long even if never signalled")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pass == "" {
		return errors.New("-pass is required")
	}
	accept, err := json.Marshal(map[string]any{"allow": true, "egress": map[string]string{"interface": *iface}})
	if err != nil {
		return err
	}
	var n atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		var req struct{ User, Password string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if req.User != *user || req.Password != *pass {
			w.Write([]byte(`{"allow": false}`))
			return
		}
		w.Write(accept)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := untilSignal(*life)
	defer cancel()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	fmt.Fprintf(os.Stderr, "authhook: %d requests answered\n", n.Load())
	return nil
}
