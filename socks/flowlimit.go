package socks

import (
	"context"
	"errors"
	"fmt"

	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Errors of the flow limits, in the flow log line.
var (
	errUserConns   = errors.New("user has max_connections flows open")
	errServerConns = errors.New("server has max_connections flows open")
)

// userFlows is one user's running flows and, while any runs, its rate
// limiters.
type userFlows struct {
	n        int
	up, down *rate.Limiter // nil while the user has no rate limit
}

// acquireFlow counts the flow sc is about to start against the user's
// quota and the user's and the server's max_connections. Over a limit it
// replies, logs the flow with outcome "limit" ("quota" for the quota) and
// returns false. A user's limit or quota gets reply 0x02 (a rule about
// this user); the server's gets 0x01, since the request itself is allowed
// and may succeed later. Once admitted, the flow is counted in the user's
// accounting, and its bytes will be (flowCounts).
func (sc *serverConn) acquireFlow(rec *record, name string, u User) bool {
	if err := u.Account.Check(); err != nil {
		sc.answerRefusal(RepNotAllowed, err)
		rec.finish(RepNotAllowed, outcomeQuota, err)
		sc.logFlow(rec, zap.InfoLevel)
		return false
	}
	e, err := sc.srv.lim.takeFlow(name, u, sc.st.Limits.MaxConnections)
	if err != nil {
		rep := byte(RepNotAllowed)
		if errors.Is(err, errServerConns) {
			rep = RepGeneralFailure
		}
		sc.answerRefusal(rep, err)
		rec.finish(rep, outcomeLimit, err)
		sc.logFlow(rec, zap.WarnLevel)
		return false
	}
	sc.flow, sc.flowName = e, name
	sc.acct = u.Account
	u.Account.Started()
	return true
}

// flowCounts are the live counters the relay adds a flow's bytes to: the
// one counting hook of every relayed flow.
func (sc *serverConn) flowCounts() relay.Counts {
	if sc.acct == nil {
		return relay.Counts{}
	}
	return relay.Counts{Up: &sc.acct.Up, Down: &sc.acct.Down}
}

func (l *limitState) takeFlow(name string, u User, global int) (*userFlows, error) {
	l.flowMu.Lock()
	defer l.flowMu.Unlock()
	e := l.users[name]
	switch {
	case u.MaxConnections > 0 && e != nil && e.n >= u.MaxConnections:
		return nil, fmt.Errorf("%w (%d)", errUserConns, u.MaxConnections)
	case global > 0 && l.flows >= global:
		return nil, fmt.Errorf("%w (%d)", errServerConns, global)
	}
	if e == nil {
		if l.users == nil {
			l.users = make(map[string]*userFlows)
		}
		e = &userFlows{}
		l.users[name] = e
	}
	e.n++
	l.flows++
	e.setRate(u.Rate)
	return e, nil
}

// setRate makes the user's limiters follow r: created at the first paced
// flow, changed in place by a reload (for the flows already running too),
// opened wide when the rate is removed. Called with flowMu held.
func (e *userFlows) setRate(r Rate) {
	switch {
	case r.BytesPerSec <= 0:
		if e.up != nil {
			e.up.SetLimit(rate.Inf)
			e.down.SetLimit(rate.Inf)
		}
	case e.up == nil:
		e.up = rate.NewLimiter(rate.Limit(r.BytesPerSec), r.Burst)
		e.down = rate.NewLimiter(rate.Limit(r.BytesPerSec), r.Burst)
	default:
		for _, lim := range []*rate.Limiter{e.up, e.down} {
			if lim.Limit() != rate.Limit(r.BytesPerSec) {
				lim.SetLimit(rate.Limit(r.BytesPerSec))
			}
			if lim.Burst() != r.Burst {
				lim.SetBurst(r.Burst)
			}
		}
	}
}

// relayLimits are the limiters a flow of user u uses: none unless u has a
// rate, so unpaced flows take the relay's plain path.
func (sc *serverConn) relayLimits(u User) relay.Limits {
	if sc.flow == nil || u.Rate.BytesPerSec <= 0 {
		return relay.Limits{}
	}
	sc.srv.lim.flowMu.Lock()
	defer sc.srv.lim.flowMu.Unlock()
	return relay.Limits{Up: sc.flow.up, Down: sc.flow.down}
}

// applyRates puts the rates of st in force for the users' running flows.
func (s *Server) applyRates(st *Settings) {
	l := &s.lim
	l.flowMu.Lock()
	defer l.flowMu.Unlock()
	for name, e := range l.users {
		if e.up == nil {
			continue
		}
		u, ok := st.Users[name]
		if name == "" {
			u, ok = st.NoAuthUser, true
		}
		if !ok {
			continue // removed: its flows keep the rate they had
		}
		e.setRate(u.Rate)
	}
}

// releaseLimits gives back what sc holds: its handshake slot and its flow.
// Called once, by connDone.
func (s *Server) releaseLimits(sc *serverConn) {
	s.endHandshake(sc)
	if sc.stop != nil {
		sc.stop()
	}
	if sc.flow == nil {
		return
	}
	l := &s.lim
	l.flowMu.Lock()
	l.flows--
	if sc.flow.n--; sc.flow.n == 0 {
		delete(l.users, sc.flowName)
	}
	l.flowMu.Unlock()
	sc.flow = nil
}

// flowContext is a context that ends when the server cuts sc's flow (a
// reload, a lost interface, Close): a paced relay can be parked in its
// limiter, where closing the sockets alone would not reach it.
func (s *Server) flowContext(sc *serverConn) context.Context {
	ctx, cancel := context.WithCancel(s.ctx)
	s.mu.Lock()
	sc.stop = cancel
	cut := sc.ended != nil || s.forced
	s.mu.Unlock()
	if cut {
		cancel()
	}
	return ctx
}
