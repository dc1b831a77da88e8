package socks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/relay"
	"github.com/ifsocks/ifsocks/udpio"
	"go.uber.org/zap"
)

// errNoUDPPort: every port of [server] udp_ports is in use.
var errNoUDPPort = errors.New("no free port in udp_ports")

// errAssocLimit: the user (or, without authentication, the client IP)
// already has max_associations open.
var errAssocLimit = errors.New("too many UDP associations (max_associations)")

// errUDPPortRequired: the request named port 0 while udp_require_port is
// set.
var errUDPPortRequired = errors.New("UDP ASSOCIATE with DST.PORT 0 refused (udp_require_port): the client must name the port it sends from")

// association is one UDP ASSOCIATE: a client-facing relay socket, one
// unconnected outbound socket per address family bound to the user's
// interface, and the TCP control connection whose end ends it all.
type association struct {
	srv   *Server
	owner *serverConn // the control connection's; a panic ends it
	// st are the settings at the association's start: its sockets,
	// limits and timeouts. The destination policy is read from the
	// server's current settings for every batch of datagrams instead,
	// so a reload that denies an address stops running associations
	// from sending there.
	st      *Settings
	dialer  bind.Dialer // the association's egress
	control net.Conn
	relay   *net.UDPConn
	out     [2]*net.UDPConn // IPv4, IPv6; nil when the host lacks the family

	// The directions: up from the relay socket, then down from each
	// outbound socket. One goroutine serves them all through group (see
	// run).
	dirs  []direction
	group *udpio.Group

	// ctx ends when the association does; it bounds name lookups.
	ctx    context.Context
	cancel context.CancelFunc

	clientIP netip.Addr // from the control connection; datagrams from elsewhere are dropped
	// clientPort is the client's UDP port: from the request when not zero,
	// else from the first datagram. 0 until known.
	clientPort atomic.Uint32
	fixedPort  bool

	sent  sentSet
	names nameCache // used by the upstream goroutine only
	// source is the source address per family, learnt at the first
	// datagram of that family; written by the upstream goroutine, read
	// after it has ended.
	source [2]netip.Addr

	// lim holds the user's rate limiters, shared with its other flows;
	// a datagram over the rate is dropped (UDP has no flow control to
	// slow the sender with, and queueing would only add delay).
	lim relay.Limits

	last      atomic.Int64 // unix nanoseconds of the last datagram relayed
	idle      atomic.Bool
	stats     udpStats
	closeOnce sync.Once
}

// associate serves UDP ASSOCIATE (RFC 1928 section 7). It returns when the
// control connection closes, the association is idle for the idle timeout,
// or the server stops. The egress is chosen once, for the association's
// life: its outbound sockets are bound to it.
func (sc *serverConn) associate(rec *record, req Addr, user User, eg *Egress, name string) {
	st := sc.st
	if req.Port == 0 && st.UDP.RequirePort {
		// Warn: a client mistake the operator may want to see, since
		// it breaks the client until it names its port.
		sc.answerRefusal(RepNotAllowed, errUDPPortRequired)
		rec.finish(RepNotAllowed, outcomeDenied, errUDPPortRequired)
		sc.logFlow(rec, zap.WarnLevel)
		return
	}
	if !sc.beginFlow(rec) {
		return
	}
	key, limit := "user:"+name, st.UDP.MaxAssociations
	if name == "" {
		key = "ip:" + rec.client.Addr().String()
	}
	if user.MaxAssociations > 0 {
		limit = user.MaxAssociations
	}
	if !sc.srv.acquireAssoc(key, limit) {
		writeReply(sc.conn, RepNotAllowed, netip.AddrPort{})
		rec.finish(RepNotAllowed, outcomeLimit, fmt.Errorf("%w: %d open", errAssocLimit, limit))
		sc.logFlow(rec, zap.WarnLevel)
		return
	}
	defer sc.srv.releaseAssoc(key)

	a, use, err := sc.openAssociation(rec.client.Addr(), eg, req, rec.flowID())
	rec.tookEgress(use)
	if err == nil && !sc.srv.setEgress(sc, use.route.Interface, nil) {
		a.closeSockets()
		err = sc.srv.endReason(sc)
		if err == nil {
			err = errShuttingDown
		}
	}
	if errors.Is(err, errNoUDPPort) {
		sc.refuse(rec, replyFor(err), outcomeError, err)
		return
	}
	if err != nil {
		sc.refuseErr(rec, err)
		return
	}
	defer a.closeAll()
	a.lim = sc.relayLimits(user)
	a.stats.metrics = st.Metrics
	a.stats.counters = st.Metrics.UDP(rec.user, rec.iface)
	a.stats.acct = sc.acct
	bnd := addrPortOfUDP(a.relay.LocalAddr())
	if st.UDP.Advertise.IsValid() {
		bnd = netip.AddrPortFrom(st.UDP.Advertise, bnd.Port())
	}
	if err := writeReply(sc.conn, RepSucceeded, bnd); err != nil {
		rec.finish(RepSucceeded, relayOutcome(err), fmt.Errorf("write reply: %w", err))
		sc.logFlow(rec, zap.InfoLevel)
		return
	}
	if tc, ok := sc.conn.(*net.TCPConn); ok && st.TCPKeepAlive > 0 {
		// The control connection is the association's lifetime:
		// keepalive finds a client that vanished without a FIN.
		keepAlive(tc, st.TCPKeepAlive)
	}
	st.Metrics.FlowActive(rec.user, rec.iface, 1)
	a.run()
	st.Metrics.FlowActive(rec.user, rec.iface, -1)
	a.log(sc, rec, bnd)
}

// openAssociation opens the association's sockets on the first route of
// the egress plan whose outbound sockets can be bound. Routes are planned
// by the client's address, so a hash strategy keeps a client on one
// interface.
func (sc *serverConn) openAssociation(client netip.Addr, eg *Egress, req Addr, id flowID) (*association, egressUse, error) {
	return openEgress(sc.st, eg, sc.localIP(), client.String(), &sc.srv.turn, id, func(route bind.Dialer) (*association, error) {
		return sc.newAssociation(route, req, client)
	})
}

func (sc *serverConn) newAssociation(route bind.Dialer, req Addr, clientIP netip.Addr) (*association, error) {
	st := sc.st
	a := &association{
		srv:      sc.srv,
		owner:    sc,
		st:       st,
		dialer:   route,
		control:  sc.conn,
		clientIP: clientIP,
		sent:     newSentSet(st.UDP.ReplyFilter),
		names:    newNameCache(),
	}

	a.ctx, a.cancel = context.WithCancel(sc.srv.ctx)
	if req.Port != 0 {
		a.clientPort.Store(uint32(req.Port))
		a.fixedPort = true
	}
	local := addrPortOf(sc.conn.LocalAddr())
	if !local.IsValid() {
		a.cancel()
		return nil, errors.New("control connection has no IP address")
	}
	if err := a.openOutbound(); err != nil {
		a.closeSockets()
		return nil, err
	}
	r, err := openRelay(local.Addr(), st.UDP.PortMin, st.UDP.PortMax)
	if err != nil {
		a.closeSockets()
		return nil, fmt.Errorf("open UDP relay on %s: %w", local.Addr(), err)
	}
	a.relay = r
	if err := a.openRelays(); err != nil {
		a.closeSockets()
		return nil, err
	}
	a.last.Store(time.Now().UnixNano())
	return a, nil
}

// direction is what reads one socket and relays what it read.
type direction struct {
	r     *udpio.Reader
	relay func(n int) // handles the n datagrams r has just read
	where string      // the panic label
}

// openRelays sets up the directions and the group that waits for them.
// Outside Linux there is no group (each direction gets a goroutine).
func (a *association) openRelays() error {
	up, err := a.newUpRelay()
	if err != nil {
		return fmt.Errorf("UDP relay: %w", err)
	}
	a.dirs = append(a.dirs, direction{up.r, up.relay, panicUDPUpstream})
	writers := []*udpio.Writer{up.w[0], up.w[1]}
	for _, c := range a.out {
		if c != nil {
			down, err := a.newDownRelay(c)
			if err != nil {
				return fmt.Errorf("UDP relay: %w", err)
			}
			a.dirs = append(a.dirs, direction{down.r, down.relay, panicUDPDownstream})
			writers = append(writers, down.w)
		}
	}
	readers := make([]*udpio.Reader, len(a.dirs))
	for i, d := range a.dirs {
		readers[i] = d.r
	}
	a.group, err = udpio.NewGroup(readers...)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("UDP relay: %w", err)
	}
	// The one goroutine must not wait for room on one socket while the
	// other direction waits for it: a datagram that does not fit is
	// dropped (counted send_failed), as a router drops at a full queue.
	for _, w := range writers {
		if w != nil {
			w.DropWhenFull()
		}
	}
	return nil
}

// openOutbound opens the per-family outbound sockets. A bind failure fails
// the association (fail closed); a family the host does not have is only
// left out.
func (a *association) openOutbound() error {
	for i, network := range [2]string{"udp4", "udp6"} {
		c, err := a.dialer.ListenUDP(a.ctx, network)
		var bindErr *bind.Error
		switch {
		case err == nil:
			a.out[i] = c
		case errors.Is(err, bind.ErrFamily):
			continue // the source address has only the other family
		case errors.As(err, &bindErr):
			return err
		case errors.Is(err, syscall.EAFNOSUPPORT), errors.Is(err, syscall.EADDRNOTAVAIL):
			continue
		default:
			return fmt.Errorf("open outbound %s socket: %w", network, err)
		}
	}
	if a.out[0] == nil && a.out[1] == nil {
		return errors.New("no outbound UDP socket could be opened")
	}
	return nil
}

// openRelay opens the client-facing socket on local (the address the
// client's TCP connection arrived on), on a kernel-chosen port or the
// first free one of [min, max] from a random start.
func openRelay(local netip.Addr, min, max uint16) (*net.UDPConn, error) {
	network := "udp4"
	if local.Is6() {
		network = "udp6"
	}
	if min == 0 {
		return net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	}
	n := int(max-min) + 1
	start := rand.IntN(n)
	for i := range n {
		port := min + uint16((start+i)%n)
		c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, port)))
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
	return nil, errNoUDPPort
}

// run relays until the control connection ends or the association is
// idle, then closes everything and waits for its goroutines.
func (a *association) run() {
	var wg sync.WaitGroup
	if a.group != nil {
		wg.Go(a.serveGroup)
	} else {
		a.serveEach(&wg)
	}
	var it *relay.IdleTimer
	if a.st.IdleTimeout > 0 {
		it = relay.StartIdleTimer(a.st.IdleTimeout, a.quiet, func() {
			a.idle.Store(true)
			a.closeAll()
		})
	}
	// RFC 1928: the association lives as long as its TCP connection.
	// Anything the client sends on it is ignored.
	io.Copy(io.Discard, a.control)
	a.closeAll()
	wg.Wait()
	if it != nil {
		it.Stop()
	}
}

// serveGroup relays both ways from one goroutine, woken through the
// group whenever any socket has datagrams (see udpio.Group: one
// goroutine per direction cost a thread wake-up and a park per batch
// more). It returns when a socket or the group is closed.
func (a *association) serveGroup() {
	where := panicUDPUpstream
	defer a.closeAll()
	defer a.srv.recoverConnAt(a.owner, &where)
	a.group.Serve(func(i, n int) {
		d := &a.dirs[i]
		where = d.where
		d.relay(n)
	})
}

// serveEach relays with one goroutine per socket, where there is no
// group.
func (a *association) serveEach(wg *sync.WaitGroup) {
	for _, d := range a.dirs {
		wg.Go(func() {
			defer a.closeAll()
			defer a.srv.recoverConn(a.owner, d.where)
			for {
				n, err := d.r.Read()
				if err != nil {
					return
				}
				d.relay(n)
			}
		})
	}
}

func (a *association) quiet() time.Duration {
	return time.Since(time.Unix(0, a.last.Load()))
}

func (a *association) touch() { a.last.Store(time.Now().UnixNano()) }

// closeAll ends the association; safe to call from any goroutine, any
// number of times.
func (a *association) closeAll() {
	a.closeOnce.Do(func() {
		a.control.Close()
		a.closeSockets()
	})
}

// closeSockets closes what the association opened, leaving the control
// connection to the caller (a failed setup still owes the client a reply).
func (a *association) closeSockets() {
	a.cancel()
	if a.group != nil {
		a.group.Close()
	}
	if a.relay != nil {
		a.relay.Close()
	}
	for _, c := range a.out {
		if c != nil {
			c.Close()
		}
	}
}

func (s *Server) acquireAssoc(key string, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.assocs[key] >= limit {
		return false
	}
	s.assocs[key]++
	return true
}

func (s *Server) releaseAssoc(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.assocs[key]--; s.assocs[key] <= 0 {
		delete(s.assocs, key)
	}
}

func addrPortOfUDP(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
