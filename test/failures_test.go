//go:build linux

package test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Expected outcome kinds of a failing SOCKS exchange.
const (
	failAuth   = iota // RFC 1929 status != 0, then close
	failMethod        // method 0xFF, then close
	failReply         // CONNECT reply != 0
)

type failCase struct {
	name  string
	kind  int
	reply int // for failReply: exact RFC 1928 REP
	req   socksRequest
	curl  curlOpts // with url; empty url: no curl equivalent
	url   string
}

var failCases = []failCase{
	{name: "wrong-password", kind: failAuth,
		req:  socksRequest{user: "alice", pass: wrongPass, target: "10.231.9.9:8080"},
		curl: curlOpts{user: "alice", pass: wrongPass}, url: "http://10.231.9.9:8080/"},
	{name: "unknown-user", kind: failAuth,
		req:  socksRequest{user: "mallory", pass: wrongPass, target: "10.231.9.9:8080"},
		curl: curlOpts{user: "mallory", pass: wrongPass}, url: "http://10.231.9.9:8080/"},
	{name: "no-credentials", kind: failMethod,
		req:  socksRequest{methods: []byte{methodNoAuth}, target: "10.231.9.9:8080"},
		curl: curlOpts{}, url: "http://10.231.9.9:8080/"},
	{name: "loopback-v4", kind: failReply, reply: 0x02,
		req:  socksRequest{user: "alice", pass: alicePass, target: "127.0.0.1:8080"},
		curl: curlOpts{user: "alice", pass: alicePass}, url: "http://127.0.0.1:8080/"},
	{name: "loopback-v6", kind: failReply, reply: 0x02,
		req:  socksRequest{user: "alice", pass: alicePass, target: "[::1]:8080"},
		curl: curlOpts{user: "alice", pass: alicePass}, url: "http://[::1]:8080/"},
	{name: "name-resolving-to-loopback", kind: failReply, reply: 0x02,
		req:  socksRequest{user: "alice", pass: alicePass, target: "loop.test:8080"},
		curl: curlOpts{user: "alice", pass: alicePass, hostname: true}, url: "http://loop.test:8080/"},
	{name: "proxy-own-wan1-address", kind: failReply, reply: 0x02,
		req:  socksRequest{user: "alice", pass: alicePass, target: "10.231.1.1:8080"},
		curl: curlOpts{user: "alice", pass: alicePass}, url: "http://10.231.1.1:8080/"},
	{name: "proxy-own-listen-address", kind: failReply, reply: 0x02,
		req:  socksRequest{user: "alice", pass: alicePass, target: "10.231.0.1:1080"},
		curl: curlOpts{user: "alice", pass: alicePass}, url: "http://10.231.0.1:1080/"},
	{name: "carol-missing-interface", kind: failReply, reply: 0x03,
		req:  socksRequest{user: "carol", pass: carolPass, target: "10.231.9.9:8080"},
		curl: curlOpts{user: "carol", pass: carolPass}, url: "http://10.231.9.9:8080/"},
	{name: "nxdomain", kind: failReply, reply: 0x04,
		req:  socksRequest{user: "alice", pass: alicePass, target: "nosuch.test:8080"},
		curl: curlOpts{user: "alice", pass: alicePass, hostname: true}, url: "http://nosuch.test:8080/"},
	{name: "unknown-address-type", kind: failReply, reply: 0x08,
		req: socksRequest{user: "alice", pass: alicePass, target: "10.231.9.9:8080", atyp: 0x05}},
}

// Test 3: every refusal yields the exact code, curl fails too, and alice's
// traffic running meanwhile is unaffected.
func TestFailures(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C

	stopAlice := aliceInBackground(t, e)
	for _, fc := range failCases {
		t.Run(fc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req := fc.req
			req.proxy = proxyListen4
			res, err := socksDo(ctx, C, req)
			if res.conn != nil {
				res.conn.Close()
			}
			if err != nil {
				t.Fatalf("raw SOCKS exchange: %v (got so far: %+v)", err, res)
			}
			switch fc.kind {
			case failAuth:
				if res.method != methodUserPass || res.authStatus <= 0 {
					t.Errorf("method %#x auth status %d, want method 0x02 and status != 0", res.method, res.authStatus)
				}
			case failMethod:
				if res.method != methodNone {
					t.Errorf("method %#x, want 0xff (no acceptable method)", res.method)
				}
			case failReply:
				if res.method != methodUserPass || res.authStatus != 0 || res.reply != fc.reply {
					t.Errorf("method %#x auth %d reply %#x, want 0x02, 0, %#x", res.method, res.authStatus, res.reply, fc.reply)
				}
			}
			if !res.closed {
				t.Errorf("server kept the connection open after the failure")
			}
			if fc.url == "" {
				return
			}
			r := curlIn(t, C, fc.curl, fc.url)
			if r.exit != curlExitProxy {
				t.Errorf("curl %s: exit %d (stdout %q, stderr %q), want %d (CURLE_PROXY)",
					fc.url, r.exit, r.stdout, r.stderr, curlExitProxy)
			}
		})
	}
	stopAlice()
}

// aliceInBackground keeps two clients fetching through alice until the
// returned function is called; that function then asserts that every
// request succeeded from wan1 and that there were some.
func aliceInBackground(t *testing.T, e *env) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				body, err := goHTTPGet(ctx, e.topo.C, proxyListen4, alice.name, alice.pass, "http://10.231.9.9:8080/")
				if ctx.Err() != nil {
					return // cancelled mid-request: not a daemon failure
				}
				if err == nil && body != wan1V4 {
					err = errors.New("whoami saw " + body + ", want " + wan1V4)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
				time.Sleep(20 * time.Millisecond) // steady load, not a flood
			}
		}()
	}
	stop := func() {
		// Let alice get a fair number of requests through even if the
		// failure cases were quick.
		for deadline := time.Now().Add(10 * time.Second); ok.Load() < 10 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		if failed.Load() != 0 || ok.Load() < 10 {
			t.Errorf("alice in parallel: %d ok, %d failed (first error: %v); want >= 10 ok, 0 failed",
				ok.Load(), failed.Load(), firstErr)
		}
	}
	t.Cleanup(func() { cancel(); wg.Wait() }) // also on Fatal
	return stop
}
