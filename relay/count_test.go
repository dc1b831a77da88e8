package relay_test

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/relay"
	"golang.org/x/time/rate"
)

// TestCountsWhileRunning: Counts know what moved while the flow still
// runs (a bulk transfer, small messages, paced or not), and agree with the
// Result at the end.
func TestCountsWhileRunning(t *testing.T) {
	for _, paced := range []bool{false, true} {
		name := "plain"
		if paced {
			name = "paced"
		}
		t.Run(name, func(t *testing.T) {
			var up, down atomic.Int64
			client, proxyClient := tcpPair(t)
			proxyUp, upstream := tcpPair(t)
			done := make(chan relay.Result, 1)
			cnt := relay.Counts{Up: &up, Down: &down}
			if paced {
				lim := rate.NewLimiter(rate.Limit(1<<30), 1<<20)
				relay.StartLimited(context.Background(), proxyClient, proxyUp, 0, relay.Limits{Up: lim, Down: lim}, cnt, func(r relay.Result) { done <- r })
			} else {
				relay.Start(proxyClient, proxyUp, 0, cnt, func(r relay.Result) { done <- r })
			}
			defer func() {
				client.Close()
				upstream.Close()
				<-done
			}()
			for _, c := range []*net.TCPConn{client, upstream} {
				c.SetDeadline(time.Now().Add(30 * time.Second))
			}
			// Bulk down, kept open: splice bursts.
			bulk := make([]byte, 6<<20)
			rand.Read(bulk)
			go upstream.Write(bulk)
			if _, err := io.ReadFull(client, make([]byte, len(bulk))); err != nil {
				t.Fatal(err)
			}
			waitCount(t, &down, int64(len(bulk)))
			// Small messages up, one at a time: buffered reads.
			msg := make([]byte, 300)
			for i := range 20 {
				if _, err := client.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(upstream, msg); err != nil {
					t.Fatal(err)
				}
				waitCount(t, &up, int64((i+1)*len(msg)))
			}
			client.CloseWrite()
			upstream.CloseWrite()
			var r relay.Result
			select {
			case r = <-done:
				done <- r
			case <-time.After(10 * time.Second):
				t.Fatal("relay did not end")
			}
			if r.Up != up.Load() || r.Down != down.Load() {
				t.Errorf("Result %d up %d down, Counts %d up %d down", r.Up, r.Down, up.Load(), down.Load())
			}
		})
	}
}

// waitCount waits (bounded) until c reaches want while the flow runs; a
// count only added at the end never does.
func waitCount(t *testing.T, c *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("live count %d, want %d while the flow runs", c.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkCountedRelay compares a relay with and without live counts.
func BenchmarkCountedRelay(b *testing.B) {
	for _, counted := range []bool{false, true} {
		name := "off"
		if counted {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			var up, down atomic.Int64
			cnt := relay.Counts{}
			if counted {
				cnt = relay.Counts{Up: &up, Down: &down}
			}
			client, proxyClient := tcpPair(b)
			proxyUp, upstream := tcpPair(b)
			done := make(chan relay.Result, 1)
			relay.Start(proxyClient, proxyUp, 0, cnt, func(r relay.Result) { done <- r })
			buf := make([]byte, 256<<10)
			b.SetBytes(int64(len(buf)))
			go func() {
				for range b.N {
					upstream.Write(buf)
				}
				upstream.CloseWrite()
			}()
			io.Copy(io.Discard, client)
			client.Close()
			<-done
		})
	}
}
