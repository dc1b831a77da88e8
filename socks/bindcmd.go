package socks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"go.uber.org/zap"
)

// errBindClient: the client closed its connection, or sent bytes, while
// its BIND waited for the peer; nothing may come before the second reply.
var errBindClient = errors.New("client closed or wrote to its connection before the second BIND reply")

// errBindPeer: a connection to a BIND socket came from an address the
// client did not name; it is closed and the wait goes on.
var errBindPeer = errors.New("connection from an address the client did not name")

// bindPeer serves BIND (RFC 1928 section 4, CMD 0x02): listen on the
// flow's egress interface, reply with the listening address, accept one
// connection from the address the client named (any, when it named the
// zero address), reply with the peer, then relay as CONNECT does. It
// returns true once the relay owns the connection.
func (sc *serverConn) bindPeer(rec *record, dst Addr, user User, eg *Egress) bool {
	st := sc.st
	client, ok := sc.beginTCPFlow(rec)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(sc.srv.ctx, st.ConnectTimeout)
	ln, expect, use, err := sc.bindListen(ctx, eg, dst, rec.flowID())
	cancel()
	rec.tookEgress(use)
	if err != nil {
		sc.refuseErr(rec, err)
		return false
	}
	rec.local = addrPortOf(ln.Addr())
	if err := writeReply(sc.conn, RepSucceeded, rec.local); err != nil {
		ln.Close()
		rec.finish(RepSucceeded, relayOutcome(err), fmt.Errorf("write first reply: %w", err))
		sc.logFlow(rec, zap.InfoLevel)
		return false
	}
	peer, err := sc.acceptPeer(ln, expect, st.BindTimeout)
	ln.Close()
	if cut := sc.srv.endReason(sc); err != nil && cut != nil {
		// Cut while waiting (its user removed by a reload): say so,
		// rather than blame the client for the closed connection; a
		// warning, as for a cut CONNECT.
		sc.answerRefusal(RepGeneralFailure, cut)
		rec.finish(RepGeneralFailure, cutOutcome(cut), cut)
		sc.logFlow(rec, zap.WarnLevel)
		return false
	}
	if err == nil && !sc.srv.setEgress(sc, use.route.Interface, peer) {
		if err = sc.srv.endReason(sc); err == nil {
			err = errShuttingDown
		}
		sc.refuse(rec, RepGeneralFailure, cutOutcome(err), err)
		return false
	}
	if errors.Is(err, errBindClient) {
		// The client's mistake or departure, not a failure of ours.
		sc.refuse(rec, RepGeneralFailure, outcomePeerReset, err)
		return false
	}
	if err != nil {
		sc.refuseErr(rec, err)
		return false
	}
	rec.remote = addrPortOf(peer.RemoteAddr())
	return sc.startRelay(rec, user, client, peer, rec.remote, nil)
}

// bindListen opens the BIND socket on the first route of the egress plan
// that can listen, and returns it with the peer addresses to accept (none:
// any). The named peer must pass the destination policy, as a CONNECT
// target would.
func (sc *serverConn) bindListen(ctx context.Context, eg *Egress, dst Addr, id flowID) (*net.TCPListener, []netip.Addr, egressUse, error) {
	type bound struct {
		ln     *net.TCPListener
		expect []netip.Addr
	}
	b, use, err := openEgress(sc.st, eg, sc.localIP(), targetKey(eg, dst), &sc.srv.turn, id, func(route bind.Dialer) (bound, error) {
		ln, expect, err := sc.bindRoute(ctx, route, dst)
		return bound{ln, expect}, err
	})
	return b.ln, b.expect, use, err
}

func (sc *serverConn) bindRoute(ctx context.Context, route bind.Dialer, dst Addr) (*net.TCPListener, []netip.Addr, error) {
	var expect []netip.Addr
	switch {
	case dst.Name != "":
		addrs, err := route.LookupIP(ctx, dst.Name)
		if err != nil {
			return nil, nil, err
		}
		expect = addrs
	case !dst.IP.IsUnspecified():
		expect = []netip.Addr{dst.IP}
	}
	for _, a := range expect {
		if err := sc.st.Policy.Check(a); err != nil {
			return nil, nil, err
		}
	}
	local, err := sc.bindAddr(ctx, route, dst, expect)
	if err != nil {
		return nil, nil, err
	}
	ln, err := route.ListenTCP(ctx, local)
	if err != nil {
		return nil, nil, err
	}
	return ln, expect, nil
}

// bindAddr picks the address to listen on: the route's source address of
// the named peer's family (of the other when the route has only that one);
// else the one the interface would use towards the named peer; else (the
// client named no peer) the interface's first address of the family the
// client used, or, with kernel routing, the address the client connected
// to.
func (sc *serverConn) bindAddr(ctx context.Context, route bind.Dialer, dst Addr, expect []netip.Addr) (netip.Addr, error) {
	switch {
	case route.HasSource():
		want4 := dst.Name != "" || dst.IP.Is4()
		if len(expect) > 0 {
			want4 = expect[0].Is4()
		}
		if a := route.SourceFor(want4); a.IsValid() {
			return a, nil
		}
		return route.SourceFor(!want4), nil
	case len(expect) > 0:
		return route.SourceAddr(ctx, expect[0])
	case route.Interface == "":
		return addrPortOf(sc.conn.LocalAddr()).Addr(), nil
	}
	want4 := dst.Name != "" || dst.IP.Is4()
	ifc, err := net.InterfaceByName(route.Interface)
	if err != nil {
		return netip.Addr{}, &bind.Error{Interface: route.Interface, Err: bind.ErrNoInterface}
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, &bind.Error{Interface: route.Interface, Err: err}
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ip = ip.Unmap(); ok && ip.Is4() == want4 && !ip.IsLinkLocalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, &bind.Error{Interface: route.Interface, Err: fmt.Errorf("no usable address of the requested family: %w", syscall.ENETUNREACH)}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// acceptPeer waits up to wait (0: no limit) for a connection from one of expect (any
// when empty) that the policy allows; others are closed and the wait goes
// on. The client closing its connection ends the wait.
func (sc *serverConn) acceptPeer(ln *net.TCPListener, expect []netip.Addr, wait time.Duration) (*net.TCPConn, error) {
	if wait > 0 {
		ln.SetDeadline(time.Now().Add(wait))
	}
	// Nothing is expected from the client until the second reply; a read
	// returning means it closed (or broke the protocol): stop waiting.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		defer sc.srv.recoverConn(sc, panicBindWait)
		var b [1]byte
		if _, err := sc.conn.Read(b[:]); !isTimeout(err) {
			ln.Close()
		}
	}()
	defer func() {
		sc.conn.SetReadDeadline(time.Unix(1, 0)) // unblocks the reader
		<-gone
		sc.conn.SetReadDeadline(time.Time{})
	}()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if isTimeout(err) {
				return nil, fmt.Errorf("no connection within %v: %w", wait, context.DeadlineExceeded)
			}
			return nil, errBindClient
		}
		from := addrPortOf(c.RemoteAddr()).Addr()
		if len(expect) > 0 && !slices.Contains(expect, from) {
			sc.srv.log.Debug("BIND: connection from an address the client did not name; closed",
				zap.Stringer("client", sc.clientAddr()), sc.listenerField(), sc.listenerNameField(),
				zap.Stringer("from", from), zap.Error(errBindPeer))
			c.Close()
			continue
		}
		// The policy current at the peer's arrival: a reload during
		// the wait may have denied it.
		if err := sc.srv.Settings().Policy.Check(from); err != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}
