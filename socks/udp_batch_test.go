package socks

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/policy"
)

// startAllocFreeEcho answers every datagram to its sender from a loop that
// allocates nothing, so that a benchmark's allocation count is the relay's.
func startAllocFreeEcho(tb testing.TB) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], src)
		}
	}()
	tb.Cleanup(func() { c.Close(); <-done })
	return addrPortOfUDP(c.LocalAddr())
}

// BenchmarkUDPRelay measures one round trip (client -> relay -> echo ->
// relay -> client) of a 512-byte datagram, with 32 in flight, through a
// whole association on loopback with metrics on. allocs/op is what the
// relay allocates per datagram relayed each way (the client and the echo
// server allocate nothing).
func BenchmarkUDPRelay(b *testing.B) {
	st := udpSettings(b)
	st.Metrics = metrics.New()
	env := startServer(b, st)
	echo := startAllocFreeEcho(b)
	u := associate(b, env, "alice", alicePass)
	const window = 32
	msg := append(append([]byte{0, 0, 0}, appendAddr(nil, echo)...), make([]byte, 512)...)
	in := make([]byte, 2048)
	send := func() {
		if _, err := u.conn.WriteToUDPAddrPort(msg, u.relay); err != nil {
			b.Fatal(err)
		}
	}
	recv := func() bool {
		u.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := u.conn.ReadFromUDPAddrPort(in)
		return err == nil && n == len(msg)
	}
	// Warm up: the first datagram locks the port, fills the caches.
	send()
	if !recv() {
		b.Fatal("no echo through the relay")
	}
	b.ReportAllocs()
	b.ResetTimer()
	inFlight, lost := 0, 0
	for i := 0; i < b.N; i++ {
		for inFlight < window {
			send()
			inFlight++
		}
		if recv() {
			inFlight--
		} else {
			lost++
			inFlight = 0 // the window timed out: start over
		}
	}
	b.StopTimer()
	for inFlight > 0 && recv() {
		inFlight--
	}
	if lost > b.N/100 {
		b.Fatalf("%d of %d round trips timed out", lost, b.N)
	}
}

// TestUDPBurstMixed sends a burst of good and bad datagrams back to back,
// so that the relay reads them in batches: each must still be judged on
// its own. The good ones come back in order and intact, and every drop
// is counted under its reason.
func TestUDPBurstMixed(t *testing.T) {
	st := udpSettings(t) // MaxDatagram 2048
	st.Policy = policy.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}, false)
	env := startServer(t, st)
	echo := startUDPEcho(t, "udp4", "127.0.0.1:0", false)
	u := associate(t, env, "alice", alicePass)
	denied := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), echo.addr().Port())
	hdr := append([]byte{0, 0, 0}, appendAddr(nil, echo.addr())...)
	var want [][]byte
	bytesUp := 0
	for i := range 60 {
		p := bytes.Repeat([]byte{byte(i)}, 1+i%7)
		switch i % 6 {
		case 0, 3: // valid, small
		case 1:
			u.sendRaw(append([]byte{0, 0, 1}, append(hdr[3:], p...)...)) // FRAG = 1
			continue
		case 2:
			u.send(denied, p)
			continue
		case 4: // exactly the largest payload allowed, or one byte over
			p = bytes.Repeat([]byte{byte(i)}, 2048+i%12/10)
			if len(p) > 2048 {
				u.send(echo.addr(), p)
				continue
			}
		case 5: // over the relay's read buffer: cut by the kernel
			u.send(echo.addr(), make([]byte, 2400))
			continue
		}
		u.send(echo.addr(), p)
		want = append(want, p)
		bytesUp += len(p)
	}
	for i, w := range want {
		_, p, err := u.recv(2 * time.Second)
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i, len(want), err)
		}
		if !bytes.Equal(p, w) {
			t.Fatalf("reply %d: %d bytes of %#x, want %d of %#x", i, len(p), p[:min(len(p), 1)], len(w), w[0])
		}
	}
	u.ctl.c.Close()
	line := waitAssocLog(t, env)
	got := line["dropped"].(map[string]any)
	wantDrops := map[string]int64{"fragmented": 10, "denied": 10, "too_large": 10 + 5}
	for k, v := range wantDrops {
		if got[k] != v {
			t.Errorf("dropped[%s] = %v, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(wantDrops) {
		t.Errorf("dropped %v, want only %v", got, wantDrops)
	}
	n := int64(len(want))
	if line["dgrams_up"] != n || line["dgrams_down"] != n || line["bytes_up"] != int64(bytesUp) || line["bytes_down"] != int64(bytesUp) {
		t.Errorf("counts %v, want %d datagrams and %d bytes each way", line, n, bytesUp)
	}
}
