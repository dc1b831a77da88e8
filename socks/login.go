package socks

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"time"

	"github.com/ifsocks/ifsocks/auth"
)

// checksPerCPU bounds the password checks (bcrypt, one core each for tens
// of milliseconds) running at once in the whole server to this many per
// core: a flood of logins from many addresses then leaves the relays CPU,
// and its checks queue instead.
const checksPerCPU = 2

func maxChecks() int64 { return int64(checksPerCPU * runtime.GOMAXPROCS(0)) }

// authenticate decides a login of name from sc's client. A blocked client
// (or client and name) is refused before anything is checked; credentials
// verified recently pass at once; otherwise the check (bcrypt for the
// users of the file, a request for the auth backend's) waits for its turn
// (authGuard.begin; bcrypt also for the server-wide bound) and its result
// is counted. It returns nil, an error wrapping auth.ErrBadCredentials or
// auth.ErrUnavailable, errAuthBlocked, or the error that ended the wait
// (the handshake timed out, the server is closing).
func (sc *serverConn) authenticate(client netip.Addr, name, pass string) error {
	st := sc.st
	lim := st.Limits.AuthFail
	g := &sc.srv.lim.guard
	if g.refuse(client, name, lim, time.Now()) {
		return errAuthBlocked
	}
	_, local := st.Users[name]
	local = local || st.Backend == nil
	if !local {
		// A login the backend accepted and its cache still holds
		// costs what a cached [[users]] login does: no guard flight,
		// no request slot.
		if u, ok := st.Backend.Cached(name, pass); ok {
			sc.remote.Store(&remoteUser{name: name, user: u})
			return nil
		}
	}
	var key auth.Key
	if st.Auth != nil {
		var ok bool
		if key, ok = st.Auth.Lookup(name, pass); ok && local {
			return nil
		}
	} else {
		key = g.uniqueKey() // no store to key with: attempts share nothing
	}
	ctx, cancel := sc.waitContext(time.Now())
	defer cancel()
	t, err := g.begin(ctx, client, name, key, lim)
	if err != nil {
		return err
	}
	switch {
	case t.leader && local:
		err = sc.srv.lim.checks.Acquire(ctx, 1)
		if err == nil {
			sc.srv.lim.checksRunning.Add(1)
			err = st.Auth.Check(key, name, pass)
			sc.srv.lim.checksRunning.Add(-1)
			sc.srv.lim.checks.Release(1)
		}
	case t.leader:
		err = sc.remoteLogin(ctx, client, name, pass)
	}
	err = g.finish(t, err, lim, sc.listenerField(), sc.listenerNameField())
	if err == nil && !t.leader && !local {
		// The backend's answer went to the leader's connection; this
		// one asks too, answered from the backend's cache.
		err = sc.remoteLogin(ctx, client, name, pass)
	}
	return err
}

// waitContext is the context of a wait for a password check: it ends
// handshake_timeout after start, when the server is closed, and when sc is closed
// (Shutdown closes connections still in their handshake). The returned
// function must be called when the wait is over.
func (sc *serverConn) waitContext(start time.Time) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(sc.srv.ctx)
	if d := sc.st.HandshakeTimeout; d > 0 {
		ctx, cancel = context.WithDeadline(sc.srv.ctx, start.Add(d))
	}
	s := sc.srv
	s.mu.Lock()
	sc.cancelWait = cancel
	s.mu.Unlock()
	return ctx, func() {
		s.mu.Lock()
		sc.cancelWait = nil
		s.mu.Unlock()
		cancel()
	}
}

// authMetric is the ifsocks_auth_failures_total reason of a failed login,
// or "" for an error that is not one (the handshake ended while waiting).
func authMetric(err error) string {
	switch {
	case errors.Is(err, errAuthBlocked):
		return "blocked"
	case errors.Is(err, auth.ErrBadCredentials):
		return "bad_credentials"
	case errors.Is(err, auth.ErrUnavailable):
		// The backend's failure, not the client's: refused, but not
		// counted against the client (authGuard.finish).
		return "backend_unavailable"
	}
	return ""
}
