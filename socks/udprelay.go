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

// upstream reads the client's datagrams from the relay socket, checks
// them and sends their payload from the outbound socket of the
// destination's family. It returns when the relay socket is closed.
//
// Datagrams are read and sent in batches (package udpio); each one
// is still checked, counted and dropped on its own, in arrival order.
func (a *association) upstream() {
	max := a.st.UDP.MaxDatagram
	// One byte more than the largest acceptable datagram, so that a
	// datagram the read truncated can be told from one that fits.
	size := maxUDPHeader + max + 1
	r, err := udpio.NewReader(a.relay, size)
	if err != nil {
		return
	}
	var w [2]*udpio.Writer
	for fam, c := range a.out {
		if c != nil {
			if w[fam], err = udpio.NewWriter(c); err != nil {
				return
			}
		}
	}
	// The destination last recorded in a.sent: only this goroutine adds
	// to it, so while the client keeps sending to one place it is still
	// there and the lock need not be taken again.
	var recorded netip.AddrPort
	// The last IP destination's verdict under policy pol: a client
	// sending to one place pays the policy check once per reload rather
	// than once per datagram. A reload swaps the policy pointer, which
	// discards it.
	var verdict struct {
		pol    *policy.Policy
		dst    Addr
		to     netip.AddrPort
		reason dropReason
	}
	for {
		n, err := r.Read()
		if err != nil {
			return
		}
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
			case truncated || len(b) == size || len(payload) > max:
				a.stats.drop(dropTooLarge)
				continue
			}
			var to netip.AddrPort
			var reason dropReason
			if dst.Name == "" && verdict.pol == pol && verdict.dst == dst {
				to, reason = verdict.to, verdict.reason
			} else {
				to, reason = a.destination(pol, dst)
				if dst.Name == "" {
					verdict.pol, verdict.dst, verdict.to, verdict.reason = pol, dst, to, reason
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
			if to != recorded {
				a.sent.add(to)
				recorded = to
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

// downstream reads datagrams arriving on an outbound socket, drops those
// the reply filter refuses, and sends the rest to the client with a SOCKS
// UDP header naming their source. Like upstream, it works in batches.
func (a *association) downstream(c *net.UDPConn) {
	max := a.st.UDP.MaxDatagram
	// Each reply's header is written in the room kept in front of its
	// payload, and the two go out as one piece: nothing is copied.
	r, err := udpio.NewReaderHeadroom(c, max+1, maxUDPReplyHeader)
	if err != nil {
		return
	}
	w, err := udpio.NewWriter(a.relay)
	if err != nil {
		return
	}
	var allowed sentCache
	for {
		n, err := r.Read()
		if err != nil {
			return
		}
		for i := range n {
			b, src, truncated := r.Datagram(i)
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			if truncated || len(b) > max {
				a.stats.drop(dropTooLarge)
				continue
			}
			if !allowed.allows(&a.sent, src) {
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
			continue
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
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return 0
	}
	return 1
}
