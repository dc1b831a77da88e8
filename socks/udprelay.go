package socks

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/ifsocks/ifsocks/policy"
	"github.com/ifsocks/ifsocks/udpio"
)

// upRelay is the upstream direction: it reads the client's datagrams
// from the relay socket, checks them and sends their payload from the
// outbound socket of the destination's family.
//
// Datagrams are read and sent in batches (package udpio); each one
// is still checked, counted and dropped on its own, in arrival order.
type upRelay struct {
	a    *association
	r    *udpio.Reader
	w    [2]*udpio.Writer
	max  int // the largest payload relayed
	size int // the read buffer: the largest header and payload, and one byte
	// The destination last recorded in a.sent: only this direction adds
	// to it, so while the client keeps sending to one place it is still
	// there and the lock need not be taken again.
	recorded netip.AddrPort
	// The last IP destination's verdict under policy pol: a client
	// sending to one place pays the policy check once per reload rather
	// than once per datagram. A reload swaps the policy pointer, which
	// discards it.
	verdict struct {
		pol    *policy.Policy
		dst    Addr
		to     netip.AddrPort
		reason dropReason
	}
}

func (a *association) newUpRelay() (*upRelay, error) {
	max := a.st.UDP.MaxDatagram
	// One byte more than the largest acceptable datagram, so that a
	// datagram the read truncated can be told from one that fits.
	u := &upRelay{a: a, max: max, size: maxUDPHeader + max + 1}
	var err error
	if u.r, err = udpio.NewReader(a.relay, u.size); err != nil {
		return nil, err
	}
	for fam, c := range a.out {
		if c != nil {
			if u.w[fam], err = udpio.NewWriter(c); err != nil {
				return nil, err
			}
		}
	}
	return u, nil
}

// relay handles the n datagrams the reader has just read.
func (u *upRelay) relay(n int) {
	a, r, w := u.a, u.r, &u.w
	pol := a.srv.settings.Load().Policy
	for i := range n {
		b, src, truncated := r.Datagram(i)
		if !a.fromClient(src) {
			a.stats.drop(dropForeign)
			continue
		}
		dst, payload, err := parseUDPHeader(b)
		switch {
		case errors.Is(err, errFragment):
			a.stats.drop(dropFragment)
			continue
		case err != nil:
			a.stats.drop(dropMalformed)
			continue
		case truncated || len(b) == u.size || len(payload) > u.max:
			a.stats.drop(dropTooLarge)
			continue
		}
		var to netip.AddrPort
		var reason dropReason
		if dst.Name == "" && u.verdict.pol == pol && u.verdict.dst == dst {
			to, reason = u.verdict.to, u.verdict.reason
		} else {
			to, reason = a.destination(pol, dst)
			if dst.Name == "" {
				u.verdict.pol, u.verdict.dst, u.verdict.to, u.verdict.reason = pol, dst, to, reason
			}
		}
		if reason != dropNone {
			a.stats.drop(reason)
			continue
		}
		if a.lim.Up != nil && !a.lim.Up.AllowN(time.Now(), len(payload)) {
			a.stats.drop(dropRateLimit)
			continue
		}
		// Recorded before sending: the reply can arrive, on another
		// goroutine, before the send returns.
		if to != u.recorded {
			a.sent.add(to)
			u.recorded = to
		}
		if !w[family(to.Addr())].Add(nil, payload, to) {
			a.stats.drop(dropSendFailed)
		}
	}
	sent := false
	for fam, fw := range w {
		if fw != nil && fw.Len() > 0 {
			sent = a.flushUp(fam, fw) || sent
		}
	}
	if sent {
		a.touch()
	}
}

// flushUp sends the batch queued for family fam and counts each datagram.
// It reports whether any went out.
func (a *association) flushUp(fam int, w *udpio.Writer) bool {
	w.Flush()
	dgrams, bytes := 0, 0
	for i := range w.Len() {
		n, to, ok := w.Result(i)
		if !ok {
			a.stats.drop(dropSendFailed)
			continue
		}
		if !a.source[fam].IsValid() {
			a.source[fam], _ = a.dialer.SourceAddr(a.ctx, to.Addr())
		}
		dgrams++
		bytes += n
	}
	a.stats.up(dgrams, bytes)
	w.Reset()
	return dgrams > 0
}

// fromClient accepts only the client's IP and its UDP port: the port named
// in the request, or else the port of the first datagram from that IP.
func (a *association) fromClient(src netip.AddrPort) bool {
	if src.Addr().Unmap().WithZone("") != a.clientIP.WithZone("") {
		return false
	}
	p := uint32(src.Port())
	if a.clientPort.CompareAndSwap(0, p) {
		return true
	}
	return a.clientPort.Load() == p
}

// destination resolves dst if it is a name (through the user's interface,
// cached) and applies the destination policy. It picks the first allowed
// address whose family has an outbound socket.
func (a *association) destination(pol *policy.Policy, dst Addr) (netip.AddrPort, dropReason) {
	addrs := []netip.Addr{dst.IP}
	if dst.Name != "" {
		var err error
		if addrs, err = a.lookup(dst.Name); err != nil {
			return netip.AddrPort{}, dropResolve
		}
	}
	reason := dropNoRoute
	for _, ip := range addrs {
		ip = ip.Unmap()
		if err := pol.Check(ip); err != nil {
			reason = dropDenied
			continue
		}
		if a.out[family(ip)] == nil {
			continue
		}
		return netip.AddrPortFrom(ip, dst.Port), dropNone
	}
	return netip.AddrPort{}, reason
}

// lookup bounds a name resolution by the connect timeout (at most 5 s: a
// slow lookup holds up this association's other datagrams).
func (a *association) lookup(name string) ([]netip.Addr, error) {
	if addrs, err, ok := a.names.get(name); ok {
		return addrs, err
	}
	ctx, cancel := context.WithTimeout(a.ctx, min(a.st.ConnectTimeout, 5*time.Second))
	defer cancel()
	addrs, err := a.dialer.LookupIP(ctx, name)
	a.names.put(name, addrs, err)
	return addrs, err
}

// downRelay is one downstream direction: it reads the datagrams arriving
// on an outbound socket, drops those the reply filter refuses, and sends
// the rest to the client with a SOCKS UDP header naming their source.
// Like upRelay, it works in batches.
type downRelay struct {
	a       *association
	r       *udpio.Reader
	w       *udpio.Writer
	max     int
	allowed sentCache
}

func (a *association) newDownRelay(c *net.UDPConn) (*downRelay, error) {
	d := &downRelay{a: a, max: a.st.UDP.MaxDatagram}
	var err error
	// Each reply's header is written in the room kept in front of its
	// payload, and the two go out as one piece: nothing is copied.
	if d.r, err = udpio.NewReaderHeadroom(c, d.max+1, maxUDPReplyHeader); err != nil {
		return nil, err
	}
	if d.w, err = udpio.NewWriter(a.relay); err != nil {
		return nil, err
	}
	return d, nil
}

// relay handles the n datagrams the reader has just read.
func (d *downRelay) relay(n int) {
	a, r, w := d.a, d.r, d.w
	for i := range n {
		b, src, truncated := r.Datagram(i)
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if truncated || len(b) > d.max {
			a.stats.drop(dropTooLarge)
			continue
		}
		if !d.allowed.allows(&a.sent, src) {
			a.stats.drop(dropUnsolicited)
			continue
		}
		port := a.clientPort.Load()
		if port == 0 {
			a.stats.drop(dropUnsolicited)
			continue
		}
		if a.lim.Down != nil && !a.lim.Down.AllowN(time.Now(), len(b)) {
			a.stats.drop(dropRateLimit)
			continue
		}
		head := appendUDPReplyHeader(r.Headroom(i, udpReplyHeaderLen(src))[:0], src)
		if !w.Add(head, b, netip.AddrPortFrom(a.clientIP, uint16(port))) {
			a.stats.drop(dropSendFailed)
		}
	}
	if w.Len() == 0 {
		return
	}
	w.Flush()
	dgrams, bytes := 0, 0
	for i := range w.Len() {
		n, _, ok := w.Result(i)
		if !ok {
			a.stats.drop(dropSendFailed)
			continue
		}
		dgrams++
		bytes += n
	}
	a.stats.down(dgrams, bytes)
	w.Reset()
	if dgrams > 0 {
		a.touch()
	}
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return 0
	}
	return 1
}
