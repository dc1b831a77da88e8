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
// user's interface, reply with the outbound socket's address, relay. It
// returns true once the relay owns the connection. early holds bytes the
// client sent after its request without waiting for the reply; they go to
// the target first.
func (sc *serverConn) connect(rec *record, dst Addr, user User, early []byte) bool {
	st := sc.st
	client, ok := sc.conn.(*net.TCPConn)
	if !ok {
		// Only fuzz tests serve other connections; the relay needs TCP.
		sc.refuse(rec, RepGeneralFailure, outcomeError, errors.New("client connection is not TCP"))
		return false
	}
	if !sc.srv.beginFlow(sc, rec.user, user.Interface) {
		sc.refuse(rec, RepGeneralFailure, outcomeShutdown, errors.New("server is shutting down"))
		return false
	}
	ctx, cancel := context.WithTimeout(sc.srv.ctx, st.ConnectTimeout)
	start := time.Now()
	up, err := dialTarget(ctx, st, user, dst)
	cancel()
	st.Metrics.Dial(user.Interface, time.Since(start), err == nil)
	if err != nil {
		rep := replyFor(err)
		outcome := outcomeFor(rep)
		if ourFault(err) {
			outcome = outcomeError
		}
		sc.refuse(rec, rep, outcome, err)
		return false
	}
	rec.remote = addrPortOf(up.RemoteAddr())
	rec.local = addrPortOf(up.LocalAddr())
	if !sc.srv.setUpstream(sc, up) {
		cut := sc.srv.endReason(sc)
		if cut == nil {
			cut = errors.New("server is shutting down")
		}
		sc.refuse(rec, RepGeneralFailure, cutOutcome(cut), cut)
		return false
	}
	// Counted before the reply, so a client that has its reply sees
	// itself in the gauge.
	st.Metrics.FlowActive(rec.user, user.Interface, 1)
	err = writeReply(sc.conn, RepSucceeded, rec.local)
	if err == nil && len(early) > 0 {
		_, err = up.Write(early)
		rec.up = int64(len(early))
	}
	if err != nil {
		up.Close()
		st.Metrics.FlowActive(rec.user, user.Interface, -1)
		rec.finish(RepSucceeded, outcomeReset, fmt.Errorf("write reply or early data: %w", err))
		sc.logFlow(rec, zap.InfoLevel)
		return false
	}
	// The relay's two goroutines own the flow from here; this goroutine,
	// whose stack grew through the handshake and the dial, can end.
	done := func(res relay.Result) {
		st.Metrics.FlowActive(rec.user, user.Interface, -1)
		sc.relayDone(rec, res)
		sc.srv.connDone(sc)
	}
	if lim := sc.relayLimits(user); lim != (relay.Limits{}) {
		relay.StartLimited(sc.srv.flowContext(sc), client, up, st.IdleTimeout, lim, done)
		return true
	}
	relay.Start(client, up, st.IdleTimeout, done)
	return true
}

// relayDone logs a relayed flow's end.
func (sc *serverConn) relayDone(rec *record, res relay.Result) {
	rec.up += res.Up
	rec.down = res.Down
	switch cut := sc.srv.endReason(sc); {
	case cut != nil:
		rec.finish(RepSucceeded, cutOutcome(cut), cut)
		sc.logFlow(rec, zap.WarnLevel)
		return
	case res.Idle:
		rec.finish(RepSucceeded, outcomeIdle, nil)
	case res.Err != nil:
		rec.finish(RepSucceeded, outcomeReset, res.Err)
	default:
		rec.finish(RepSucceeded, outcomeOK, nil)
	}
	sc.logFlow(rec, zap.InfoLevel)
}

// dialTarget resolves dst through the user's interface when it is a name,
// drops addresses the policy refuses, and connects to the rest in turn
// until one answers. Every socket, DNS included, is bound to the interface.
func dialTarget(ctx context.Context, st *Settings, user User, dst Addr) (*net.TCPConn, error) {
	pol := st.Policy
	d := bind.Dialer{Interface: user.Interface}
	if err := st.checkInterface(user.Interface); err != nil {
		return nil, err
	}
	addrs := []netip.Addr{dst.IP}
	if dst.Name != "" {
		var err error
		if addrs, err = d.LookupIP(ctx, dst.Name); err != nil {
			return nil, err
		}
	}
	allowed := addrs[:0:0]
	var denied error
	for _, a := range addrs {
		if err := pol.Check(a); err != nil {
			denied = err
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
		// Give each remaining address an equal share of the time left,
		// as net.Dialer does, so one black hole cannot eat it all.
		actx, cancel := context.WithTimeout(ctx, share(ctx, len(allowed)-i))
		c, err := d.DialTCP(actx, netip.AddrPortFrom(a, dst.Port))
		cancel()
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
// error so the operator sees it.
func ourFault(err error) bool {
	var bindErr *bind.Error
	return errors.As(err, &bindErr) &&
		!errors.Is(err, bind.ErrNoInterface) && !errors.Is(err, bind.ErrInterfaceDown)
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
