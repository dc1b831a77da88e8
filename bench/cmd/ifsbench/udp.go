package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

func udpCmd(args []string) error {
	fs := flag.NewFlagSet("udp", flag.ContinueOnError)
	var e endpoint
	e.register(fs, portUDP)
	window := fs.Int("window", 64, "datagrams in flight (closed loop)")
	size := fs.Int("size", 512, "payload bytes per datagram")
	dur := fs.Duration("duration", 10*time.Second, "how long to send")
	lossAfter := fs.Duration("loss-timeout", 500*time.Millisecond, "a datagram not echoed within this is lost and replaced")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.parse(); err != nil {
		return err
	}
	if e.proto != "socks5" {
		return fmt.Errorf("-proxy-proto %s: UDP needs SOCKS5", e.proto)
	}
	if !e.targetAP.Addr().Is4() {
		return fmt.Errorf("-target %s: the UDP test speaks IPv4 only", e.targetAP)
	}
	if *size < 12 || *size > 8000 || *window < 1 {
		return fmt.Errorf("-size %d -window %d: want 12-8000 bytes and at least 1", *size, *window)
	}
	conn, to, control, err := udpSetup(&e)
	if err != nil {
		return err
	}
	if control != nil {
		// The association lives as long as its TCP connection.
		defer control.Close()
	}
	defer conn.Close()
	l := &udpLoop{conn: conn, to: to, socks: control != nil, target: e.targetAP,
		size: *size, lossAfter: *lossAfter, slots: make([]slot, *window)}
	meter := startCPU(e.watch)
	got, elapsed := l.run(*dur)
	cpu := meter.stop()
	vals := map[string]float64{
		"dps":      float64(got) / elapsed.Seconds(),
		"sent":     float64(l.sent),
		"received": float64(l.recv),
		"lost":     float64(l.lost),
		"late":     float64(l.late),
		"loss_pct": 100 * float64(l.lost) / float64(max(l.sent, 1)),
		"duration": elapsed.Seconds(),
	}
	return e.emit(Record{Test: e.testName("udp"), Values: vals, CPU: cpu})
}

// udpSetup returns the socket to send from and where to send: the
// proxy's relay after a UDP ASSOCIATE, the forwarder, or the echo server
// itself.
func udpSetup(e *endpoint) (conn *net.UDPConn, to netip.AddrPort, control *net.TCPConn, err error) {
	if e.forward != "" {
		conn, err = net.ListenUDP("udp4", nil)
		return conn, e.forwardAP, nil, err
	}
	if e.proxy == "" {
		conn, err = net.ListenUDP("udp4", nil)
		return conn, e.targetAP, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	control, err = dialTCP(ctx, e.proxy)
	if err != nil {
		return nil, to, nil, err
	}
	// Bind the UDP socket first, on the address the proxy sees, and name
	// it in the request: every proxy then knows the client's port.
	local := control.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		control.Close()
		return nil, to, nil, err
	}
	control.SetDeadline(time.Now().Add(e.timeout))
	me := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	bnd, err := handshake(control, e.user, e.pass, cmdUDP, me)
	if err != nil {
		conn.Close()
		control.Close()
		return nil, to, nil, fmt.Errorf("udp associate: %w", err)
	}
	control.SetDeadline(time.Time{})
	if !bnd.Addr().IsValid() || bnd.Addr().IsUnspecified() {
		// RFC 1928 lets a server answer 0.0.0.0: the relay is then on
		// the address we reached the proxy at.
		bnd = netip.AddrPortFrom(control.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(), bnd.Port())
	}
	return conn, bnd, control, nil
}

// udpLoop keeps len(slots) datagrams in flight. Each carries its slot and
// a sequence number; an echo frees the slot, which is refilled at once; a
// datagram not echoed within lossAfter is counted lost and replaced.
type udpLoop struct {
	conn      *net.UDPConn
	to        netip.AddrPort
	socks     bool // prefix the SOCKS UDP header
	target    netip.AddrPort
	size      int
	lossAfter time.Duration

	mu                     sync.Mutex // guards everything below
	slots                  []slot
	seq                    uint64
	stopping               bool
	sent, recv, lost, late int64
}

type slot struct {
	seq  uint64
	sent time.Time
	live bool
}

// run sends for d, then waits for the datagrams still in flight, and
// returns how many echoes arrived within d and how long d really was.
func (l *udpLoop) run(d time.Duration) (int64, time.Duration) {
	start := time.Now()
	l.conn.SetReadDeadline(start.Add(d + 2*l.lossAfter + time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.receive()
	}()
	stopScan := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { l.scan(stopScan) })
	buf := make([]byte, udpHeaderLen+l.size)
	l.mu.Lock()
	seqs := make([]uint64, len(l.slots))
	for i := range l.slots {
		seqs[i] = l.refill(i, start)
	}
	l.mu.Unlock()
	for i, seq := range seqs {
		l.send(buf, i, seq)
	}
	time.Sleep(time.Until(start.Add(d)))
	l.mu.Lock()
	l.stopping = true
	got, elapsed := l.recv, time.Since(start)
	l.mu.Unlock()
	// Drain: whatever has not come back within lossAfter is lost.
	time.Sleep(l.lossAfter + l.lossAfter/2)
	close(stopScan)
	wg.Wait()
	l.conn.SetReadDeadline(time.Now())
	<-done
	l.mu.Lock()
	for i := range l.slots {
		if l.slots[i].live {
			l.lost++
			l.slots[i].live = false
		}
	}
	l.mu.Unlock()
	return got, elapsed
}

// refill gives slot i a new sequence number and returns it; l.mu must
// be held.
func (l *udpLoop) refill(i int, now time.Time) uint64 {
	l.seq++
	l.slots[i] = slot{seq: l.seq, sent: now, live: true}
	l.sent++
	return l.seq
}

// send transmits datagram seq of slot i; buf is the caller's own.
func (l *udpLoop) send(buf []byte, i int, seq uint64) {
	p := buf[udpHeaderLen:]
	binary.BigEndian.PutUint32(p[0:4], uint32(i))
	binary.BigEndian.PutUint64(p[4:12], seq)
	out := p
	if l.socks {
		putUDPHeader(buf, l.target)
		out = buf
	}
	l.conn.WriteToUDPAddrPort(out, l.to)
}

func (l *udpLoop) receive() {
	in := make([]byte, 65536)
	out := make([]byte, udpHeaderLen+l.size)
	for {
		n, _, err := l.conn.ReadFromUDPAddrPort(in)
		if err != nil {
			return
		}
		p := in[:n]
		if l.socks {
			if p, err = udpPayload(p); err != nil {
				continue
			}
		}
		if len(p) < 12 {
			continue
		}
		i := int(binary.BigEndian.Uint32(p[0:4]))
		if seq, ok := l.accept(i, binary.BigEndian.Uint64(p[4:12])); ok {
			l.send(out, i, seq)
		}
	}
}

// accept records an echo and, unless the run is stopping, refills slot
// i and returns the sequence number to send.
func (l *udpLoop) accept(i int, seq uint64) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i >= len(l.slots) || !l.slots[i].live || l.slots[i].seq != seq {
		l.late++ // already counted lost, or not ours
		return 0, false
	}
	l.recv++
	if l.stopping {
		l.slots[i].live = false
		return 0, false
	}
	return l.refill(i, time.Now()), true
}

// scan declares overdue datagrams lost and sends replacements.
func (l *udpLoop) scan(stop <-chan struct{}) {
	t := time.NewTicker(l.lossAfter / 5)
	defer t.Stop()
	buf := make([]byte, udpHeaderLen+l.size)
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			for _, r := range l.overdue(now) {
				l.send(buf, r.slot, r.seq)
			}
		}
	}
}

type resend struct {
	slot int
	seq  uint64
}

func (l *udpLoop) overdue(now time.Time) []resend {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []resend
	for i := range l.slots {
		s := &l.slots[i]
		if !s.live || now.Sub(s.sent) < l.lossAfter {
			continue
		}
		l.lost++
		if l.stopping {
			s.live = false
			continue
		}
		out = append(out, resend{i, l.refill(i, now)})
	}
	return out
}
