package socks

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// connectCycleAllocs bounds the heap allocations of one whole CONNECT
// cycle — accept, greeting, RFC 1929 login (cached), request, dial, relay
// of 64 bytes each way, close, flow line — counted across the process:
// the server's share (about 50 when this was written, most of them in
// package net's accept and dial) and this test's client and echo
// server's. It was 132 before the path was trimmed, 112 after, 93 once
// the relay took its raw connections once per flow and its reads stopped
// allocating; the bound is that plus one, so that an allocation or two
// added to the per-connection path fail it.
const connectCycleAllocs = 94

// raceAllocSlack: under the race detector sync.Pool drops a quarter of
// what is put back, so pooled buffers are allocated again now and then.
const raceAllocSlack = 12

func TestConnectCycleAllocs(t *testing.T) {
	st := testSettings(t)
	// As the daemon logs: JSON through zap's encoder, here to nowhere
	// (the observer of the other tests copies every field).
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	srv := New(zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zapcore.InfoLevel)), st)
	addr := serveLoopback(t, srv)
	echo := echoServer(t)

	greeting := []byte{5, 1, methodUserPass}
	login := append(append([]byte{1, 3}, "bob"...), byte(len(bobPass)))
	login = append(login, bobPass...)
	request := append([]byte{5, cmdConnect, 0}, appendAddr(nil, echo)...)
	payload := make([]byte, 64)
	buf := make([]byte, 64)
	var failed error
	cycle := func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			failed = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// method choice 2, auth status 2, reply 10 (IPv4 BND), echo 64
		for _, step := range []struct {
			send []byte
			want int
		}{{greeting, 2}, {login, 2}, {request, 10}, {payload, 64}} {
			if _, err := c.Write(step.send); err != nil {
				failed = err
				return
			}
			if _, err := io.ReadFull(c, buf[:step.want]); err != nil {
				failed = err
				return
			}
		}
		c.Close()
		// The server's share ends with its flow line: wait for it, so
		// that every run counts one whole cycle.
		for deadline := time.Now().Add(5 * time.Second); srv.ActiveConns() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	for range 20 { // warm up: pools, caches, the login cache, map sizes
		cycle()
	}
	got := testing.AllocsPerRun(200, cycle)
	if failed != nil {
		t.Fatal(failed)
	}
	limit := float64(connectCycleAllocs)
	if raceEnabled {
		limit += raceAllocSlack
	}
	t.Logf("%.1f allocations per CONNECT cycle (limit %.0f)", got, limit)
	if got > limit {
		t.Errorf("a CONNECT cycle took %.1f allocations, want at most %.0f", got, limit)
	}
}
