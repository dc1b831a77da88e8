//go:build linux

package socks

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

func listenUDP(tb testing.TB, network, addr string) *net.UDPConn {
	tb.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		tb.Skipf("listen %s %s: %v", network, addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestUDPReaderBatches queues datagrams of many sizes before reading, so
// that recvmmsg finds them all: each must come out once, in order, with
// its source, and the one larger than the buffer flagged as cut. The
// reader must grow from one buffer to udpBatchSize along the way.
func TestUDPReaderBatches(t *testing.T) {
	const size = 600
	for _, tt := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tt.network, func(t *testing.T) {
			rc := listenUDP(t, tt.network, tt.addr)
			sc := listenUDP(t, tt.network, tt.addr)
			r, err := newUDPReader(rc, size)
			if err != nil {
				t.Fatal(err)
			}
			var sent [][]byte
			for i := range 40 {
				n := []int{0, 1, 512, size - 1, size, size + 400}[i%6] // 0 bytes is a valid datagram
				b := bytes.Repeat([]byte{byte(i)}, n)
				if _, err := sc.WriteToUDPAddrPort(b, addrPortOfUDP(rc.LocalAddr())); err != nil {
					t.Fatal(err)
				}
				sent = append(sent, b)
			}
			rc.SetReadDeadline(time.Now().Add(5 * time.Second))
			from := addrPortOfUDP(sc.LocalAddr())
			var counts []int
			got := 0
			for got < len(sent) {
				n, err := r.read()
				if err != nil {
					t.Fatalf("after %d datagrams (reads %v): %v", got, counts, err)
				}
				counts = append(counts, n)
				for i := range n {
					b, src, cut := r.datagram(i)
					want := sent[got]
					wantCut := len(want) > size
					if wantCut {
						want = want[:size]
					}
					if !bytes.Equal(b, want) || cut != wantCut {
						t.Fatalf("datagram %d: %d bytes cut=%v, want %d bytes cut=%v", got, len(b), cut, len(want), wantCut)
					}
					if netip.AddrPortFrom(src.Addr().Unmap(), src.Port()) != from {
						t.Fatalf("datagram %d from %v, want %v", got, src, from)
					}
					got++
				}
			}
			// All 40 were queued: reads of 1, 2, 4, 8, 16 and then the rest.
			if fmt.Sprint(counts) != "[1 2 4 8 16 9]" {
				t.Errorf("datagrams per read %v, want [1 2 4 8 16 9]", counts)
			}
			if len(r.hdrs) != udpBatchSize {
				t.Errorf("reader has %d buffers after a burst, want %d", len(r.hdrs), udpBatchSize)
			}
		})
	}
}

// TestUDPReaderClosed: closing the socket ends a read that is waiting.
func TestUDPReaderClosed(t *testing.T) {
	c := listenUDP(t, "udp4", "127.0.0.1:0")
	r, err := newUDPReader(c, 100)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.read()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read on a closed socket returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still waiting 5 s after close")
	}
}

// TestUDPWriter: a batch goes out in order as header+payload; a datagram
// the kernel refuses (port 0: EINVAL) is reported unsent without stopping
// those after it; an address of the wrong family is refused at add.
func TestUDPWriter(t *testing.T) {
	for _, tt := range []struct{ network, addr, wrong string }{
		{"udp4", "127.0.0.1:0", "[::1]:9"},
		{"udp6", "[::1]:0", ""},
	} {
		t.Run(tt.network, func(t *testing.T) {
			wc := listenUDP(t, tt.network, tt.addr)
			rc := listenUDP(t, tt.network, tt.addr)
			w, err := newUDPWriter(wc)
			if err != nil {
				t.Fatal(err)
			}
			to := addrPortOfUDP(rc.LocalAddr())
			bad := netip.AddrPortFrom(to.Addr(), 0)
			if tt.wrong != "" && w.add(nil, []byte("x"), netip.MustParseAddrPort(tt.wrong)) {
				t.Fatalf("add accepted %s on an %s socket", tt.wrong, tt.network)
			}
			items := []struct {
				head, payload string
				to            netip.AddrPort
				ok            bool
			}{
				{"HD", "one", to, true},
				{"", "refused", bad, false},
				{"", "", to, true}, // an empty datagram
				{"H", "", to, true},
				{"", "four", to, true},
			}
			for _, it := range items {
				if !w.add([]byte(it.head), []byte(it.payload), it.to) {
					t.Fatalf("add %q refused", it.payload)
				}
			}
			w.flush()
			for i, it := range items {
				n, dst, ok := w.result(i)
				if ok != it.ok || n != len(it.payload) || dst != it.to {
					t.Errorf("result %d: %d bytes to %v sent=%v, want %d to %v sent=%v", i, n, dst, ok, len(it.payload), it.to, it.ok)
				}
			}
			w.reset()
			rc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			for _, it := range items {
				if !it.ok {
					continue
				}
				n, _, err := rc.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatal(err)
				}
				if string(buf[:n]) != it.head+it.payload {
					t.Fatalf("received %q, want %q", buf[:n], it.head+it.payload)
				}
			}
			rc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := rc.ReadFromUDPAddrPort(buf); err == nil {
				t.Fatalf("unexpected extra datagram %q", buf[:n])
			}
		})
	}
}

// TestUDPWriterFullAndClosed: a full batch refuses more; a flush on a
// closed socket reports every datagram unsent.
func TestUDPWriterFullAndClosed(t *testing.T) {
	wc := listenUDP(t, "udp4", "127.0.0.1:0")
	rc := listenUDP(t, "udp4", "127.0.0.1:0")
	w, err := newUDPWriter(wc)
	if err != nil {
		t.Fatal(err)
	}
	to := addrPortOfUDP(rc.LocalAddr())
	for i := range udpBatchSize {
		if !w.add(nil, []byte{byte(i)}, to) {
			t.Fatalf("add %d refused", i)
		}
	}
	if w.add(nil, []byte("one too many"), to) {
		t.Fatal("add beyond udpBatchSize accepted")
	}
	wc.Close()
	w.flush()
	for i := range w.len() {
		if _, _, ok := w.result(i); ok {
			t.Fatalf("datagram %d reported sent on a closed socket", i)
		}
	}
}
