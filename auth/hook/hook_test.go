package hook_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/auth/hook"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a real HTTP hook on loopback or a unix socket, answering with
// the body the test sets.
type server struct {
	url, sock string
	calls     atomic.Int64
	mu        sync.Mutex
	status    int
	body      string
	delay     time.Duration
	block     chan struct{} // when set, requests wait for it
	lastAuth  string
}

func start(t *testing.T, unix bool) *server {
	t.Helper()
	s := &server{status: 200, body: `{"allow": true, "egress": {"interface": "eth1"}}`}
	var ln net.Listener
	var err error
	if unix {
		s.sock = filepath.Join(t.TempDir(), "authd.sock")
		ln, err = net.Listen("unix", s.sock)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		s.url = "http://" + ln.Addr().String() + "/auth"
	}
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		s.mu.Lock()
		status, body, delay, block := s.status, s.body, s.delay, s.block
		s.lastAuth = r.Header.Get("Authorization") + "|" + r.Header.Get("X-Fleet") + "|" + r.URL.Path
		s.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})}
	done := make(chan struct{})
	go func() { defer close(done); hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close(); <-done })
	return s
}

func (s *server) set(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func client(t *testing.T, o hook.Options) *hook.Client {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	c, err := hook.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var req = auth.Request{User: "alice", Password: "pw", Protocol: "socks5"}

func TestAnswers(t *testing.T) {
	s := start(t, false)
	c := client(t, hook.Options{URL: s.url})
	tests := []struct {
		name    string
		status  int
		body    string
		allow   bool
		wantErr string
	}{
		{"allow", 200, `{"allow": true, "egress": {"interface": "eth1", "mark": 5}}`, true, ""},
		{"deny", 200, `{"allow": false}`, false, ""},
		{"deny with null egress", 200, `{"allow": false, "egress": null}`, false, ""},
		{"401 refuses", 401, `no`, false, ""},
		{"403 refuses", 403, ``, false, ""},
		{"500 fails", 500, `{"allow": true}`, false, "status 500"},
		{"no allow", 200, `{"egress": {}}`, false, `no "allow"`},
		{"unknown field", 200, `{"allow": true, "egres": {}}`, false, "unknown field"},
		{"not json", 200, `<html>`, false, "answer"},
		{"trailing data", 200, `{"allow": true} {"allow": false}`, false, "data after"},
		{"huge", 200, `{"allow": true, "egress": {"interface": "` + strings.Repeat("x", 70<<10) + `"}}`, false, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.set(tt.status, tt.body)
			a, err := c.Lookup(context.Background(), req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Lookup = %+v, %v; want an error with %q", a, err, tt.wantErr)
				}
				return
			}
			if err != nil || a.Allow != tt.allow {
				t.Errorf("Lookup = %+v, %v; want allow %v", a, err, tt.allow)
			}
		})
	}
}

func TestUnixSocketAndHeaders(t *testing.T) {
	s := start(t, true)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("t0ken\n"), 0o600)
	c := client(t, hook.Options{URL: "http://unix/ifsocks/auth", Socket: s.sock, TokenFile: tok,
		Headers: map[string]string{"X-Fleet": "eu-1"}})
	a, err := c.Lookup(context.Background(), req)
	if err != nil || !a.Allow || a.Fields["interface"] != "eth1" {
		t.Fatalf("Lookup over %s = %+v, %v", s.sock, a, err)
	}
	if s.lastAuth != "Bearer t0ken|eu-1|/ifsocks/auth" {
		t.Errorf("hook saw %q", s.lastAuth)
	}
	if _, err := hook.New(hook.Options{URL: "http://x/", TokenFile: filepath.Join(t.TempDir(), "none")}); err == nil {
		t.Error("a missing token_file was accepted")
	}
}

// remote builds an auth.Remote over the hook whose result is the answer's
// interface.
func remote(c *hook.Client, o auth.RemoteOptions) *auth.Remote[string] {
	return auth.NewRemote(c, o, func(user string, a auth.Answer) (string, error) {
		iface, _ := a.Fields["interface"].(string)
		if iface == "bad" {
			return "", errors.New("egress.interface: bad")
		}
		return iface, nil
	})
}

func TestRemoteCache(t *testing.T) {
	s := start(t, false)
	c := client(t, hook.Options{URL: s.url, Timeout: 500 * time.Millisecond})
	ctx := context.Background()
	var results []string
	var mu sync.Mutex
	r := remote(c, auth.RemoteOptions{CacheTTL: 2 * time.Second, NegativeTTL: time.Hour, StaleIfError: time.Hour,
		MaxConcurrent: 2, Wait: 100 * time.Millisecond,
		Observe: func(res string, _ time.Duration) { mu.Lock(); results = append(results, res); mu.Unlock() }})

	if v, err := r.Authenticate(ctx, req); err != nil || v != "eth1" {
		t.Fatalf("first login = %q, %v", v, err)
	}
	// Cached: the hook is not asked again, even with a new answer.
	s.set(200, `{"allow": true, "egress": {"interface": "eth2"}}`)
	if v, _ := r.Authenticate(ctx, req); v != "eth1" || s.calls.Load() != 1 {
		t.Errorf("within cache_ttl: %q after %d calls, want eth1 after 1", v, s.calls.Load())
	}
	if v, ok := r.Cached(req.User, req.Password); !ok || v != "eth1" {
		t.Errorf("Cached = %q, %v; want eth1 from the cache", v, ok)
	}
	if _, ok := r.Cached(req.User, "other"); ok {
		t.Error("Cached answered for a password never checked")
	}
	// A different password is a different entry.
	other := req
	other.Password = "pw2"
	if v, _ := r.Authenticate(ctx, other); v != "eth2" {
		t.Errorf("other password = %q, want the hook's new answer", v)
	}
	time.Sleep(2100 * time.Millisecond) // past cache_ttl
	// Stale if error: the hook fails, the expired answer serves.
	s.set(503, "")
	if v, err := r.Authenticate(ctx, req); err != nil || v != "eth1" {
		t.Errorf("hook failing, stale answer: %q, %v; want eth1", v, err)
	}
	// Negative cache: a refusal is remembered.
	deny := req
	deny.User = "mallory"
	s.set(200, `{"allow": false}`)
	for range 3 {
		if _, err := r.Authenticate(ctx, deny); !errors.Is(err, auth.ErrBadCredentials) {
			t.Errorf("refused login: %v, want ErrBadCredentials", err)
		}
	}
	// An invalid answer fails closed and is not cached.
	bad := req
	bad.User = "badif"
	s.set(200, `{"allow": true, "egress": {"interface": "bad"}}`)
	for range 2 {
		if _, err := r.Authenticate(ctx, bad); !errors.Is(err, auth.ErrUnavailable) || !strings.Contains(err.Error(), "egress.interface") {
			t.Errorf("invalid answer: %v, want ErrUnavailable naming the key", err)
		}
	}
	mu.Lock()
	got := strings.Join(results, ",")
	mu.Unlock()
	if want := "allow,allow,error,deny,invalid,invalid"; got != want {
		t.Errorf("observed %s, want %s", got, want)
	}
}

// TestRemoteConcurrency: identical logins share a request; distinct ones
// never run more than max_concurrent at once, and those without a slot
// fail closed after the wait.
func TestRemoteConcurrency(t *testing.T) {
	s := start(t, false)
	c := client(t, hook.Options{URL: s.url, MaxConns: 2, Timeout: 10 * time.Second})
	block := make(chan struct{})
	s.mu.Lock()
	s.block = block
	s.mu.Unlock()
	r := remote(c, auth.RemoteOptions{CacheTTL: time.Hour, MaxConcurrent: 2, Wait: 200 * time.Millisecond})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 110)
	for i := range 110 {
		rq := req
		if i >= 100 {
			rq.User = fmt.Sprintf("user%d", i) // 10 distinct users
		}
		wg.Go(func() {
			_, err := r.Authenticate(ctx, rq)
			errs <- err
		})
	}
	// Hold the two slots until the waiters without one have given up
	// (ten times their wait: goroutines start late on a loaded machine).
	time.Sleep(2 * time.Second)
	close(block)
	wg.Wait()
	close(errs)
	busy := 0
	for err := range errs {
		if err != nil {
			if !errors.Is(err, auth.ErrUnavailable) {
				t.Errorf("login: %v", err)
			}
			busy++
		}
	}
	// 11 distinct logins, 2 slots: 2 requests ran, the rest found no
	// slot within the wait (alice's 100 share one flight: whether it got
	// a slot decides 100 results at once).
	if n := s.calls.Load(); n != 2 {
		t.Errorf("hook got %d requests, want 2 (max_concurrent)", n)
	}
	// 9 of the 11 distinct logins found no slot: 9 failures, or, when
	// alice's was among them, her 100 and 8 others.
	if busy != 9 && busy != 108 {
		t.Errorf("%d logins failed for want of a slot, want 9 (or 108 when alice's flight lost)", busy)
	}
}

// TestRemoteLeaderGivesUp: the login whose request the others share
// giving up (its client gone) does not fail them.
func TestRemoteLeaderGivesUp(t *testing.T) {
	s := start(t, false)
	s.mu.Lock()
	s.delay = 300 * time.Millisecond
	s.mu.Unlock()
	c := client(t, hook.Options{URL: s.url, Timeout: 5 * time.Second})
	r := remote(c, auth.RemoteOptions{CacheTTL: time.Hour, MaxConcurrent: 2, Wait: time.Second})
	leader, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := r.Authenticate(leader, req); done <- err }()
	time.Sleep(50 * time.Millisecond) // the leader's request is out
	follower := make(chan error, 1)
	go func() { _, err := r.Authenticate(context.Background(), req); follower <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("leader after giving up: %v, want ErrUnavailable", err)
	}
	if err := <-follower; err != nil {
		t.Errorf("follower failed with the leader: %v", err)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("hook asked %d times, want 1", n)
	}
}
