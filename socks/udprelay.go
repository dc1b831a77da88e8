package socks

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// upstream reads the client's datagrams from the relay socket, checks
// them and sends their payload from the outbound socket of the
// destination's family. It returns when the relay socket is closed.
func (a *association) upstream() {
	max := a.st.UDP.MaxDatagram
	// One byte more than the largest acceptable datagram, so that a
	// datagram the read truncated can be told from one that fits.
	buf := make([]byte, maxUDPHeader+max+1)
	for {
		n, src, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !a.fromClient(src) {
			a.stats.drop(dropForeign)
			continue
		}
		dst, payload, err := parseUDPHeader(buf[:n])
		switch {
		case errors.Is(err, errFragment):
			a.stats.drop(dropFragment)
			continue
		case err != nil:
			a.stats.drop(dropMalformed)
			continue
		case n == len(buf) || len(payload) > max:
			a.stats.drop(dropTooLarge)
			continue
		}
		to, reason := a.destination(dst)
		if reason != dropNone {
			a.stats.drop(reason)
			continue
		}
		if a.lim.Up != nil && !a.lim.Up.AllowN(time.Now(), len(payload)) {
			a.stats.drop(dropRateLimit)
			continue
		}
		fam := family(to.Addr())
		// Recorded before sending: the reply can arrive, on another
		// goroutine, before WriteTo returns.
		a.sent.add(to)
		if _, err := a.out[fam].WriteToUDPAddrPort(payload, to); err != nil {
			a.stats.drop(dropSendFailed)
			continue
		}
		if !a.source[fam].IsValid() {
			a.source[fam], _ = a.dialer.SourceAddr(a.ctx, to.Addr())
		}
		a.stats.up(len(payload))
		a.touch()
	}
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
func (a *association) destination(dst Addr) (netip.AddrPort, dropReason) {
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
		if err := a.st.Policy.Check(ip); err != nil {
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
// UDP header naming their source.
func (a *association) downstream(c *net.UDPConn) {
	max := a.st.UDP.MaxDatagram
	buf := make([]byte, max+1)
	// The reply is built in its own buffer, never in buf: the header must
	// not overwrite payload that the next read could reuse.
	out := make([]byte, 0, 3+1+16+2+max)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if n > max {
			a.stats.drop(dropTooLarge)
			continue
		}
		if !a.sent.allows(src) {
			a.stats.drop(dropUnsolicited)
			continue
		}
		port := a.clientPort.Load()
		if port == 0 {
			a.stats.drop(dropUnsolicited)
			continue
		}
		if a.lim.Down != nil && !a.lim.Down.AllowN(time.Now(), n) {
			a.stats.drop(dropRateLimit)
			continue
		}
		out = appendUDPReply(out[:0], src, buf[:n])
		if _, err := a.relay.WriteToUDPAddrPort(out, netip.AddrPortFrom(a.clientIP, uint16(port))); err != nil {
			a.stats.drop(dropSendFailed)
			continue
		}
		a.stats.down(n)
		a.touch()
	}
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return 0
	}
	return 1
}
