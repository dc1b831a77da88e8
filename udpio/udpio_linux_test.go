//go:build linux

package udpio

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"golang.org/x/sys/unix"
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
// reader must grow from one buffer to BatchSize along the way.
func TestUDPReaderBatches(t *testing.T) {
	const size = 600
	for _, tt := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tt.network, func(t *testing.T) {
			rc := listenUDP(t, tt.network, tt.addr)
			sc := listenUDP(t, tt.network, tt.addr)
			r, err := NewReader(rc, size)
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
				n, err := r.Read()
				if err != nil {
					t.Fatalf("after %d datagrams (reads %v): %v", got, counts, err)
				}
				counts = append(counts, n)
				for i := range n {
					b, src, cut := r.Datagram(i)
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
			if len(r.hdrs) != BatchSize {
				t.Errorf("reader has %d buffers after a burst, want %d", len(r.hdrs), BatchSize)
			}
		})
	}
}

// TestUDPReaderClosed: closing the socket ends a read that is waiting.
func TestUDPReaderClosed(t *testing.T) {
	c := listenUDP(t, "udp4", "127.0.0.1:0")
	r, err := NewReader(c, 100)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read()
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
			w, err := NewWriter(wc)
			if err != nil {
				t.Fatal(err)
			}
			to := addrPortOfUDP(rc.LocalAddr())
			bad := netip.AddrPortFrom(to.Addr(), 0)
			if tt.wrong != "" && w.Add(nil, []byte("x"), netip.MustParseAddrPort(tt.wrong)) {
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
				if !w.Add([]byte(it.head), []byte(it.payload), it.to) {
					t.Fatalf("add %q refused", it.payload)
				}
			}
			w.Flush()
			for i, it := range items {
				n, dst, ok := w.Result(i)
				if ok != it.ok || n != len(it.payload) || dst != it.to {
					t.Errorf("result %d: %d bytes to %v sent=%v, want %d to %v sent=%v", i, n, dst, ok, len(it.payload), it.to, it.ok)
				}
			}
			w.Reset()
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
	w, err := NewWriter(wc)
	if err != nil {
		t.Fatal(err)
	}
	to := addrPortOfUDP(rc.LocalAddr())
	for i := range BatchSize {
		if !w.Add(nil, []byte{byte(i)}, to) {
			t.Fatalf("add %d refused", i)
		}
	}
	if w.Add(nil, []byte("one too many"), to) {
		t.Fatal("add beyond BatchSize accepted")
	}
	wc.Close()
	w.Flush()
	for i := range w.Len() {
		if _, _, ok := w.Result(i); ok {
			t.Fatalf("datagram %d reported sent on a closed socket", i)
		}
	}
}

// TestUDPWriterGSO: consecutive datagrams of one size to one destination
// go as one GSO message (a shorter one may end it), and the receiver
// still gets each datagram on its own, intact and in order.
func TestUDPWriterGSO(t *testing.T) {
	wc := listenUDP(t, "udp4", "127.0.0.1:0")
	rc := listenUDP(t, "udp4", "127.0.0.1:0")
	other := listenUDP(t, "udp4", "127.0.0.1:0")
	w, err := NewWriter(wc)
	if err != nil {
		t.Fatal(err)
	}
	if !w.gso {
		t.Skip("kernel without UDP_SEGMENT")
	}
	to, to2 := addrPortOfUDP(rc.LocalAddr()), addrPortOfUDP(other.LocalAddr())
	type item struct {
		head, payload []byte
		to            netip.AddrPort
	}
	var items []item
	for i := range 6 { // one group: 6 of 100 bytes and a shorter last one
		items = append(items, item{[]byte{'H', byte(i)}, bytes.Repeat([]byte{byte(i)}, 98), to})
	}
	items = append(items,
		item{nil, []byte("short end"), to},
		item{nil, bytes.Repeat([]byte{'o'}, 100), to2}, // another destination: a message of its own
		item{[]byte("H"), bytes.Repeat([]byte{'a'}, 99), to},
		item{[]byte("H"), bytes.Repeat([]byte{'b'}, 99), to},
		item{nil, []byte{}, to}, // empty: never part of a group
		item{[]byte("H"), bytes.Repeat([]byte{'c'}, 199), to},
	)
	for _, it := range items {
		if !w.Add(it.head, it.payload, it.to) {
			t.Fatal("add refused")
		}
	}
	w.Flush()
	if w.nmsg != 5 {
		t.Errorf("%d messages for %d datagrams, want 5 (groups of 7, 1, 2, 1, 1)", w.nmsg, len(items))
	}
	for i := range items {
		if _, _, ok := w.Result(i); !ok {
			t.Fatalf("datagram %d not sent", i)
		}
	}
	w.Reset()
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1000)
	for i, it := range items {
		c := rc
		if it.to == to2 {
			c = other
		}
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := append(bytes.Clone(it.head), it.payload...); !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: got %d bytes %q..., want %d", i, n, buf[:min(n, 4)], len(want))
		}
	}
}

// TestUDPWriterGSOEIO: where the kernel refuses GSO outright with EIO
// (before Linux 6.11 a device without checksum offload; an IPsec route;
// UDP-Lite, used here because it needs nothing but loopback), the batch
// still goes, one datagram per message, and GSO is off for the socket.
func TestUDPWriterGSOEIO(t *testing.T) {
	open := func() *net.UDPConn {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDPLITE)
		if err != nil {
			t.Skipf("no UDP-Lite: %v", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "udplite")
		defer f.Close()
		pc, err := net.FilePacketConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc.(*net.UDPConn)
	}
	wc, rc := open(), open()
	w, err := NewWriter(wc)
	if err != nil {
		t.Fatal(err)
	}
	if !w.gso {
		t.Skip("kernel without UDP_SEGMENT")
	}
	to := addrPortOfUDP(rc.LocalAddr())
	for i := range 8 {
		if !w.Add([]byte{byte(i)}, make([]byte, 499), to) {
			t.Fatal("add refused")
		}
	}
	w.Flush()
	for i := range 8 {
		if _, _, ok := w.Result(i); !ok {
			t.Fatalf("datagram %d not sent", i)
		}
	}
	if w.gso || w.nmsg != 8 {
		t.Fatalf("after EIO: gso %v, %d messages; want off and 8", w.gso, w.nmsg)
	}
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1000)
	for i := range 8 {
		n, _, err := rc.ReadFromUDPAddrPort(buf)
		if err != nil || n != 500 || buf[0] != byte(i) {
			t.Fatalf("datagram %d: %d bytes starting %d, %v", i, n, buf[0], err)
		}
	}
}

// TestUDPWriterGSOOverMTU: a GSO segment over the route's MTU (a veth
// pair's, in a namespace of its own where nothing answers) is refused
// with EMSGSIZE or EINVAL: the batch goes one datagram per message (each
// fragmented), and GSO is kept for smaller datagrams.
func TestUDPWriterGSOOverMTU(t *testing.T) {
	ns := nstest.New(t, "ifsu", "gso")
	ns.IP(t, "link", "add", "gsoveth0", "mtu", "1280", "type", "veth", "peer", "name", "gsoveth1", "mtu", "1280")
	ns.IP(t, "link", "set", "gsoveth0", "up")
	ns.IP(t, "link", "set", "gsoveth1", "up")
	ns.IP(t, "addr", "add", "10.233.251.1/24", "dev", "gsoveth0")

	w := writerInNetns(t, ns)
	to := netip.MustParseAddrPort("10.233.251.2:9")
	send := func(size int) {
		t.Helper()
		p := make([]byte, size)
		for range 4 {
			if !w.Add(nil, p, to) {
				t.Fatal("add refused")
			}
		}
		w.Flush()
		for i := range 4 {
			if _, _, ok := w.Result(i); !ok {
				t.Fatalf("%d bytes: datagram %d not sent", size, i)
			}
		}
		w.Reset()
	}
	send(1400)
	if !w.gso || w.gsoMax != 1399 || w.nmsg != 4 {
		t.Fatalf("after 1400-byte datagrams: gso %v gsoMax %d, %d messages; want on, 1399, 4", w.gso, w.gsoMax, w.nmsg)
	}
	send(1000)
	if w.nmsg != 1 {
		t.Fatalf("%d messages for 4 datagrams under the MTU, want 1", w.nmsg)
	}
}

// writerInNetns opens a UDP socket in namespace ns and a writer on it.
func writerInNetns(tb testing.TB, ns *nstest.NS) *Writer {
	tb.Helper()
	pc := ns.ListenPacket(tb, "udp4", "0.0.0.0:0")
	w, err := NewWriter(pc.(*net.UDPConn))
	if err != nil {
		tb.Fatal(err)
	}
	if !w.gso {
		tb.Skip("kernel without UDP_SEGMENT")
	}
	return w
}

// addrPortOfUDP is a's address, IPv4-mapped addresses unmapped.
func addrPortOfUDP(a net.Addr) netip.AddrPort {
	ap := a.(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestUDPHeadroom: datagrams read with headroom get a header written in
// front of them in place, and each goes out as one iovec: the receiver
// sees header+payload intact, consecutive ones of one size still grouped
// for GSO. A header elsewhere in memory still goes, as a second iovec.
func TestUDPHeadroom(t *testing.T) {
	const room = 8
	in := listenUDP(t, "udp4", "127.0.0.1:0")
	src := listenUDP(t, "udp4", "127.0.0.1:0")
	wc := listenUDP(t, "udp4", "127.0.0.1:0")
	rc := listenUDP(t, "udp4", "127.0.0.1:0")
	r, err := NewReaderHeadroom(in, 300, room)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(wc)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{100, 100, 100, 100, 100, 100, 100, 37, 0, 20}
	var sent [][]byte
	for i, n := range sizes {
		b := bytes.Repeat([]byte{byte('a' + i)}, n)
		if _, err := src.WriteToUDPAddrPort(b, addrPortOfUDP(in.LocalAddr())); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, b)
	}
	in.SetReadDeadline(time.Now().Add(5 * time.Second))
	to := addrPortOfUDP(rc.LocalAddr())
	var want [][]byte
	msgs := 0
	for len(want) < len(sent) {
		n, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			b, _, _ := r.Datagram(i)
			k := len(want)
			if !bytes.Equal(b, sent[k]) {
				t.Fatalf("datagram %d read as %q, want %q", k, b, sent[k])
			}
			// Header lengths differ by datagram size, so that a group
			// is of one size; each fits the room.
			head := r.Headroom(i, 1+len(b)%room)
			for j := range head {
				head[j] = byte('0' + k)
			}
			wantIovs := 1
			if k == len(sent)-1 {
				head, wantIovs = []byte("elsewhere"), 2 // not in front of its payload
			}
			if !w.Add(head, b, to) {
				t.Fatal("add refused")
			}
			if got := w.iov0[i+1] - w.iov0[i]; got != wantIovs {
				t.Errorf("datagram %d: %d iovecs, want %d", k, got, wantIovs)
			}
			want = append(want, append(bytes.Clone(head), b...))
		}
		w.Flush()
		for i := range w.Len() {
			k := len(want) - w.Len() + i
			if m, _, ok := w.Result(i); !ok || m != len(sent[k]) {
				t.Fatalf("datagram %d: %d payload bytes sent=%v, want %d sent", k, m, ok, len(sent[k]))
			}
		}
		msgs += w.nmsg
		w.Reset()
	}
	if w.gso && msgs >= len(sent) {
		t.Errorf("%d messages for %d datagrams: none grouped", msgs, len(sent))
	}
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1000)
	for i, wb := range want {
		n, _, err := rc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], wb) {
			t.Fatalf("datagram %d: got %q, want %q", i, buf[:n], wb)
		}
	}
}
