//go:build linux

package udpio

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// groupEvent is one datagram as Serve handed it over.
type groupEvent struct {
	socket int
	seq    uint32
}

// startGroup serves readers on conns through a Group from one goroutine
// and passes every datagram on. It fails the test if two handle calls
// ever overlap.
func startGroup(t *testing.T, conns ...*net.UDPConn) (*Group, <-chan groupEvent, <-chan error) {
	t.Helper()
	readers := make([]*Reader, len(conns))
	for i, c := range conns {
		r, err := NewReader(c, 64)
		if err != nil {
			t.Fatal(err)
		}
		readers[i] = r
	}
	g, err := NewGroup(readers...)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan groupEvent, 1024)
	done := make(chan error, 1)
	var inside atomic.Int32
	go func() {
		done <- g.Serve(func(i, n int) {
			if inside.Add(1) != 1 {
				t.Error("two handle calls at once")
			}
			for k := range n {
				b, _, _ := readers[i].Datagram(k)
				events <- groupEvent{i, binary.BigEndian.Uint32(b)}
			}
			inside.Add(-1)
		})
	}()
	t.Cleanup(func() { g.Close() })
	return g, events, done
}

func sendSeq(t *testing.T, from, to *net.UDPConn, seq uint32) {
	t.Helper()
	if _, err := from.WriteToUDPAddrPort(binary.BigEndian.AppendUint32(nil, seq), addrPortOfUDP(to.LocalAddr())); err != nil {
		t.Fatal(err)
	}
}

func nextEvent(t *testing.T, events <-chan groupEvent) groupEvent {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no datagram handed over within 5 s")
		return groupEvent{}
	}
}

// TestUDPGroup: one goroutine serves three sockets (both families). A
// datagram to any of them wakes it after it has parked; a burst larger
// than a batch on two sockets at once comes out whole and in order per
// socket; Close ends Serve.
func TestUDPGroup(t *testing.T) {
	conns := []*net.UDPConn{
		listenUDP(t, "udp4", "127.0.0.1:0"),
		listenUDP(t, "udp4", "127.0.0.1:0"),
		listenUDP(t, "udp6", "[::1]:0"),
	}
	src4 := listenUDP(t, "udp4", "127.0.0.1:0")
	src6 := listenUDP(t, "udp6", "[::1]:0")
	srcOf := func(i int) *net.UDPConn {
		if i == 2 {
			return src6
		}
		return src4
	}
	g, events, done := startGroup(t, conns...)

	// One at a time: each waits for the previous one to be handed over,
	// so the goroutine has parked in between (or is about to).
	for seq := range uint32(60) {
		i := rand.IntN(len(conns))
		if seq%10 == 9 {
			time.Sleep(20 * time.Millisecond) // certainly parked
		}
		sendSeq(t, srcOf(i), conns[i], seq)
		if ev := nextEvent(t, events); ev != (groupEvent{i, seq}) {
			t.Fatalf("handed over %+v, want socket %d seq %d", ev, i, seq)
		}
	}

	// Bursts on two sockets, each several batches long, queued together.
	const burst = 3*BatchSize + 5
	for seq := range uint32(burst) {
		sendSeq(t, src4, conns[0], seq)
		sendSeq(t, src6, conns[2], seq)
	}
	var next [3]uint32
	for range 2 * burst {
		ev := nextEvent(t, events)
		if ev.socket == 1 || ev.seq != next[ev.socket] {
			t.Fatalf("handed over %+v, want the next of socket 0 (%d) or 2 (%d)", ev, next[0], next[2])
		}
		next[ev.socket]++
	}

	g.Close()
	waitServeDone(t, done)
}

// TestUDPWriterDropWhenFull: on a route whose queue drains at 8 kbit/s
// (a veth with a tbf qdisc, in a namespace of its own), a writer's send
// buffer fills. A DropWhenFull writer's flush then returns at once,
// reporting what did not fit as unsent, instead of waiting minutes for
// room; what it reports sent did go.
func TestUDPWriterDropWhenFull(t *testing.T) {
	ns := nstest.New(t, "u2", "full")
	ns.IP(t, "link", "add", "u2full0", "type", "veth", "peer", "name", "u2full1")
	ns.IP(t, "link", "set", "u2full0", "up")
	ns.IP(t, "link", "set", "u2full1", "up")
	ns.IP(t, "addr", "add", "10.233.252.1/24", "dev", "u2full0")
	ns.IP(t, "neigh", "add", "10.233.252.2", "lladdr", "02:00:00:00:00:02", "dev", "u2full0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, stderr, err := ns.Run(ctx, nil, "tc", "qdisc", "add", "dev", "u2full0", "root", "tbf", "rate", "8kbit", "burst", "1600", "limit", "10000000"); err != nil {
		t.Skipf("tc tbf: %v %s", err, stderr)
	}
	pc := ns.ListenPacket(t, "udp4", "10.233.252.1:0")
	c := pc.(*net.UDPConn)
	if err := c.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(c)
	if err != nil {
		t.Fatal(err)
	}
	w.DropWhenFull()
	to := netip.MustParseAddrPort("10.233.252.2:9")
	payload := make([]byte, 1000)
	sent, dropped := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	for dropped == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no datagram dropped after %d sent", sent)
		}
		for range BatchSize {
			w.Add(nil, payload, to)
		}
		done := make(chan struct{})
		go func() { w.Flush(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			w.Reset()
			c.Close() // ends the flush
			<-done
			t.Fatalf("flush still waiting for room 5 s later, after %d sent", sent)
		}
		for i := range w.Len() {
			if _, _, ok := w.Result(i); ok {
				sent++
			} else {
				dropped++
			}
		}
		w.Reset()
	}
	// 16 KiB of send buffer hold a handful of 1000-byte datagrams.
	if sent == 0 || sent > 64 {
		t.Errorf("%d datagrams sent before the buffer was full, want 1 to 64", sent)
	}
}

// TestUDPGroupCloseBusy: Close ends Serve even while datagrams keep
// arriving faster than they are handled, so that the goroutine never
// parks (closing an os.File waits for the calls using it to return).
func TestUDPGroupCloseBusy(t *testing.T) {
	c := listenUDP(t, "udp4", "127.0.0.1:0")
	src := listenUDP(t, "udp4", "127.0.0.1:0")
	r, err := NewReader(c, 64)
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGroup(r)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var handled atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- g.Serve(func(_, n int) {
			handled.Add(int64(n))
			time.Sleep(time.Millisecond) // slower than the flood
		})
	}()
	stop := make(chan struct{})
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		p := make([]byte, 8)
		for {
			select {
			case <-stop:
				return
			default:
			}
			src.WriteToUDPAddrPort(p, addrPortOfUDP(c.LocalAddr()))
		}
	}()
	defer func() { close(stop); <-flooding }()
	waitUntil := time.Now().Add(5 * time.Second)
	for handled.Load() < 100 && time.Now().Before(waitUntil) {
		time.Sleep(10 * time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- g.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("Close still waiting 5 s later while datagrams keep arriving (%d handled)", handled.Load())
	}
	waitServeDone(t, done)
}

// waitServeDone waits, at most 5 s, for the error a Group's Serve returned
// after Close; Serve must report that it stopped because it was closed.
func waitServeDone(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5 s after Close")
	}
}
