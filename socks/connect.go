package socks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/policy"
	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/zap"
)

// connect serves CONNECT (RFC 1928 section 4): dial the target from the
// flow's egress, reply with the outbound socket's address, relay. It
// returns true once the relay owns the connection. early holds bytes the
// client sent after its request without waiting for the reply; they go to
// the target first.
func (sc *serverConn) connect(rec *record, dst Addr, user User, eg *Egress, early []byte) bool {
	st := sc.st
	client, ok := sc.beginTCPFlow(rec)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(sc.srv.ctx, st.ConnectTimeout)
	start := time.Now()
	up, use, err := sc.dialTarget(ctx, st, eg, dst, rec.flowID())
	cancel()
	st.Metrics.Dial(use.route.Interface, time.Since(start), err == nil)
	rec.tookEgress(use)
	if err != nil {
		sc.refuseErr(rec, err)
		return false
	}
	rec.remote = addrPortOf(up.RemoteAddr())
	rec.local = addrPortOf(up.LocalAddr())
	if !sc.srv.setEgress(sc, use.route.Interface, up) {
		cut := sc.srv.endReason(sc)
		if cut == nil {
			cut = errShuttingDown
		}
		sc.refuse(rec, RepGeneralFailure, cutOutcome(cut), cut)
		return false
	}
	return sc.startRelay(rec, user, client, up, rec.local, early)
}

// beginTCPFlow starts a flow that will be relayed over TCP, or refuses
// it when the server is stopping.
func (sc *serverConn) beginTCPFlow(rec *record) (*net.TCPConn, bool) {
	client, ok := sc.conn.(*net.TCPConn)
	if !ok {
		// Only fuzz tests serve other connections; the relay needs TCP.
		sc.refuse(rec, RepGeneralFailure, outcomeError, errors.New("client connection is not TCP"))
		return nil, false
	}
	if !sc.beginFlow(rec) {
		return nil, false
	}
	return client, true
}

// beginFlow starts sc's flow (Server.beginFlow), or refuses it: 0x01 when
// the server is stopping, 0x02 when a reload removed the user.
func (sc *serverConn) beginFlow(rec *record) bool {
	switch err := sc.srv.beginFlow(sc, rec.user); {
	case errors.Is(err, ErrUserRemoved):
		sc.refuseRemoved(rec)
		return false
	case err != nil:
		sc.refuse(rec, RepGeneralFailure, outcomeShutdown, err)
		return false
	}
	return true
}

// refuseErr refuses with the reply code and outcome err calls for.
func (sc *serverConn) refuseErr(rec *record, err error) {
	rep := replyFor(err)
	outcome := outcomeFor(rep)
	if ourFault(err) {
		outcome = outcomeError
	}
	sc.refuse(rec, rep, outcome, err)
}

// startRelay sends the success reply carrying bnd, then early data to up,
// and hands both connections to the relay; it returns true once the relay
// owns them.
func (sc *serverConn) startRelay(rec *record, user User, client, up *net.TCPConn, bnd netip.AddrPort, early []byte) bool {
	st := sc.st
	// Counted before the reply, so a client that has its reply sees
	// itself in the gauge.
	st.Metrics.FlowActive(rec.user, rec.iface, 1)
	more, err := sc.answerSuccess(bnd)
	early = append(early, more...)
	if err == nil && len(early) > 0 {
		_, err = up.Write(early)
		rec.up = int64(len(early))
		sc.acct.AddUp(rec.up)
	}
	if err != nil {
		up.Close()
		st.Metrics.FlowActive(rec.user, rec.iface, -1)
		rec.finish(RepSucceeded, relayOutcome(err), fmt.Errorf("write reply or early data: %w", err))
		sc.logFlow(rec, zap.InfoLevel)
		return false
	}
	if st.TCPKeepAlive > 0 {
		keepAlive(client, st.TCPKeepAlive)
		keepAlive(up, st.TCPKeepAlive)
	}
	// The relay's two goroutines own the flow from here; this goroutine,
	// whose stack grew through the handshake and the dial, can end.
	done := func(res relay.Result) {
		defer sc.srv.connDone(sc) // even after a panic below
		defer sc.srv.recoverConn(sc, panicRelayDone)
		// The flow's line is written from a relay goroutine, whose
		// stack is still the small one goroutines start with, and
		// zap's encoder is deep: grow it here, with four frames on
		// it, rather than in the encoder (growStack).
		growStack()
		st.Metrics.FlowActive(rec.user, rec.iface, -1)
		sc.relayDone(rec, res)
	}
	var fl *relay.Flow
	if lim := sc.relayLimits(user); lim != (relay.Limits{}) {
		fl = relay.StartLimited(sc.srv.flowContext(sc), client, up, st.IdleTimeout, lim, sc.flowCounts(), done)
	} else {
		fl = relay.Start(client, up, st.IdleTimeout, sc.flowCounts(), done)
	}
	sc.srv.setRelay(sc, fl)
	return true
}

// relayDone logs a relayed flow's end.
func (sc *serverConn) relayDone(rec *record, res relay.Result) {
	rec.up += res.Up
	rec.down = res.Down
	var pe *relay.PanicError
	if errors.As(res.Err, &pe) {
		// A bug in the relay: logged with its stack and counted like
		// a panic of any other goroutine of the connection.
		sc.srv.panicked(sc, panicRelay, pe.Value, pe.Stack)
		rec.finish(RepSucceeded, outcomeError, res.Err)
		sc.logFlow(rec, zap.ErrorLevel)
		return
	}
	switch cut := sc.srv.endReason(sc); {
	case cut != nil:
		rec.finish(RepSucceeded, cutOutcome(cut), cut)
		sc.logFlow(rec, zap.WarnLevel)
		return
	case res.Idle:
		rec.finish(RepSucceeded, outcomeIdle, nil)
	case res.Err != nil:
		rec.finish(RepSucceeded, relayOutcome(res.Err), res.Err)
	default:
		rec.finish(RepSucceeded, outcomeOK, nil)
	}
	sc.logFlow(rec, zap.InfoLevel)
}

// dialTarget connects to dst by the first route of the flow's egress plan
// that works (see openEgress): a route whose interface cannot be bound or
// has no route to the network is passed over; any other failure (refused,
// timeout, denied) ends the attempt.
func (sc *serverConn) dialTarget(ctx context.Context, st *Settings, eg *Egress, dst Addr, id flowID) (*net.TCPConn, egressUse, error) {
	return openEgress(st, eg, sc.localIP(), targetKey(eg, dst), &sc.srv.turn, id, func(route bind.Dialer) (*net.TCPConn, error) {
		return dialRoute(ctx, st, route, dst)
	})
}

// targetKey identifies a target for the hash strategy: its host. Other
// strategies need no key: "", rather than an address formatted (an
// allocation) for every flow.
func targetKey(eg *Egress, dst Addr) string {
	if eg.Strategy != Hash {
		return ""
	}
	if dst.Name != "" {
		return dst.Name
	}
	return dst.IP.String()
}

// localIP is the address the client connected to, which decides an
// ingress egress.
func (sc *serverConn) localIP() netip.Addr { return addrPortOf(sc.conn.LocalAddr()).Addr() }

// dialRoute resolves dst through route when it is a name, drops addresses
// the policy refuses or the route's source address cannot reach, and
// connects to the rest in turn until one answers. Every socket, DNS
// included, is bound to the route's interface.
func dialRoute(ctx context.Context, st *Settings, route bind.Dialer, dst Addr) (*net.TCPConn, error) {
	addrs := []netip.Addr{dst.IP}
	if dst.Name != "" {
		var err error
		if addrs, err = route.LookupIP(ctx, dst.Name); err != nil {
			return nil, err
		}
	}
	allowed := addrs[:0:0]
	var denied error
	for _, a := range addrs {
		if err := st.Policy.Check(a); err != nil {
			denied = err
			continue
		}
		if route.HasSource() && !route.SourceFor(a.Is4()).IsValid() {
			denied = fmt.Errorf("no source address of %s's family (source_ip, source_ips): %w", a, syscall.ENETUNREACH)
			continue
		}
		allowed = append(allowed, a)
	}
	if len(allowed) == 0 {
		if denied == nil {
			denied = &net.DNSError{Err: "no addresses", Name: dst.Name, IsNotFound: true}
		}
		return nil, denied
	}
	var firstErr error
	for i, a := range allowed {
		c, err := dialShare(ctx, route, netip.AddrPortFrom(a, dst.Port), len(allowed)-i)
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// dialShare dials dst with an equal share of the time ctx has left among
// the n addresses still to try, as net.Dialer does, so one black hole
// cannot eat it all. The last address gets all the time left, which is
// ctx's own deadline: it is dialled with ctx, without a context (and its
// timer) of its own.
func dialShare(ctx context.Context, route bind.Dialer, dst netip.AddrPort, n int) (*net.TCPConn, error) {
	if n <= 1 {
		return route.DialTCP(ctx, dst)
	}
	actx, cancel := context.WithTimeout(ctx, share(ctx, n))
	defer cancel()
	return route.DialTCP(actx, dst)
}

func share(ctx context.Context, n int) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return time.Minute
	}
	left := time.Until(dl)
	if n > 1 && left/time.Duration(n) > 2*time.Second {
		return left / time.Duration(n)
	}
	return left
}

// replyFor maps a dial or resolution error to a reply code (RFC 1928
// section 6).
func replyFor(err error) byte {
	var (
		bindErr *bind.Error
		dnsErr  *net.DNSError
	)
	switch {
	case errors.Is(err, policy.ErrDenied):
		return RepNotAllowed
	case errors.As(err, &bindErr), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return RepNetworkUnreachable
	case errors.As(err, &dnsErr), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return RepHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return RepConnectionRefused
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return RepTTLExpired
	}
	return RepGeneralFailure
}

// ourFault tells a failure of this host (a bind refused for lack of
// privilege, say) from the usual failures of the network: it is logged as an
// error so the operator sees it. A missing or down interface, or a source
// address no interface holds (yet), or a pool prefix without a local route,
// is the host's state, which may change (a hot-plugged ENI, an address
// assigned later, a route added): the flow is unreachable.
func ourFault(err error) bool {
	var bindErr *bind.Error
	return errors.As(err, &bindErr) &&
		!errors.Is(err, bind.ErrNoInterface) && !errors.Is(err, bind.ErrInterfaceDown) &&
		!errors.Is(err, bind.ErrNoSource) && !errors.Is(err, bind.ErrNoLocalRoute) &&
		!errors.Is(err, bind.ErrPoolSpread)
}

func outcomeFor(rep byte) string {
	switch rep {
	case RepNotAllowed:
		return outcomeDenied
	case RepNetworkUnreachable, RepHostUnreachable:
		return outcomeUnreach
	case RepConnectionRefused:
		return outcomeRefused
	case RepTTLExpired:
		return outcomeTimeout
	case RepCommandUnsupported, RepAddrUnsupported:
		return outcomeBadRequest
	}
	return outcomeError
}

// keepAliveProbes is how many unanswered keepalive probes end a connection.
const keepAliveProbes = 3

// keepAlive turns on TCP keepalive on c: the first probe after d of
// silence, then one every d. It is best effort: a socket that refuses
// still relays, and the idle timeout still ends it.
func keepAlive(c *net.TCPConn, d time.Duration) {
	_ = c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: d, Interval: d, Count: keepAliveProbes})
}
