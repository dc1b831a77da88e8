package socks

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap"
)

// errAuthBlocked: the client, or the client with this user name, is in
// its auth_fail_cooldown, or reached its limit with checks still running;
// the credentials were not checked (or their success came too late).
var errAuthBlocked = errors.New("client blocked after too many failed authentications (auth_fail_limit)")

// authTableSize bounds the entries (clients, and clients with a user name)
// whose failures are remembered. An entry is about two hundred bytes plus
// the name, so the table stays under a few megabytes whatever the number
// of addresses and names an attacker uses. Past it the least recently seen
// entry without a check running is forgotten: an attacker that cycles
// through more clients than this can shorten its own blocks, but each of
// those clients still pays bcrypt for its first tries.
const authTableSize = 16384

// maxChecksPerClient bounds the password checks (bcrypt) running at once
// for one client (clientKey); more wait their turn. Together with the
// server-wide bound (Server.lim.checks) it keeps a flood of logins from
// taking the CPU the relays need.
const maxChecksPerClient = 4

// authKey names an entry: a client alone (user "", perUser false), or a
// client and the user name it tried.
type authKey struct {
	client  netip.Addr
	user    string
	perUser bool
}

// authGuard remembers failed authentications per (client, user name) and
// per client (clientKey), and blocks the pair after AuthFailLimit.Max
// failures within the window, the client after AuthFailLimit.MaxClient:
// one user's typos do not lock out everyone behind the same address (a
// NAT), while guessing across many names still is stopped.
//
// Checks in flight count against the limits as failures do, so parallel
// guesses cannot run more checks than the limit allows: an attempt that
// would exceed it waits until a running check ends, and is refused if the
// client is blocked by then. Attempts with the same credentials from one
// client share one check. A success does not clear the count: a client
// holding one valid account could otherwise interleave successes to try
// passwords of another without end.
type authGuard struct {
	log     *zap.Logger
	metrics *metrics.Metrics

	mu      sync.Mutex
	byKey   map[authKey]*list.Element // of *authEntry
	lru     list.List                 // front: most recently seen
	stopped bool
	unique  uint64 // last uniqueKey
}

// uniqueKey is a check key that no other attempt has.
func (g *authGuard) uniqueKey() auth.Key {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unique++
	var k auth.Key
	binary.BigEndian.PutUint64(k[:], g.unique)
	return k
}

type authEntry struct {
	key      authKey
	fails    int       // failures since start
	start    time.Time // start of the window
	until    time.Time // end of the cool-down; zero when not blocked
	blocked  time.Time // start of the block
	refused  int       // attempts refused since the block began
	inflight int       // checks running that count here
	waiting  int       // attempts waiting for their turn (they keep e in the table)
	timer    *time.Timer

	// Client entries only: the checks running, by credentials, and a
	// channel closed (and replaced) whenever one ends, for attempts
	// waiting for their turn.
	checks  map[auth.Key]*authCheck
	changed chan struct{}
}

// authCheck is one password check, shared by the attempts of one client
// with the same credentials.
type authCheck struct {
	done chan struct{}
	err  error // valid once done is closed
}

// authTicket is an attempt admitted by begin: the leader runs the check,
// the others wait for its result.
type authTicket struct {
	client, user *authEntry
	key          auth.Key
	check        *authCheck
	leader       bool
}

// stale reports whether e no longer matters: its window has passed with
// no block, or its block has ended; never while a check counts in it.
func (e *authEntry) stale(now time.Time, window time.Duration) bool {
	if e.busy() {
		return false
	}
	if e.until.IsZero() {
		return now.Sub(e.start) >= window
	}
	return !now.Before(e.until)
}

// busy reports whether attempts in progress refer to e.
func (e *authEntry) busy() bool { return e.inflight > 0 || e.waiting > 0 }

// isBlocked reports whether e is in its cool-down at now.
func (e *authEntry) isBlocked(now time.Time) bool {
	return e != nil && !e.until.IsZero() && now.Before(e.until)
}

// under reports whether one more check fits under max, failures and
// checks in flight together.
func (e *authEntry) under(max int) bool { return max <= 0 || e.fails+e.inflight < max }

// refuse reports whether the client, or the client with this name, is
// blocked; a refused attempt is counted for the block's summary. It
// creates no entry.
func (g *authGuard) refuse(ip netip.Addr, user string, lim AuthFailLimit, now time.Time) bool {
	if !lim.enabled() || !ip.IsValid() {
		return false
	}
	ck := clientKey(ip)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refuseLocked(g.lookup(authKey{client: ck}, now), g.lookup(authKey{ck, user, true}, now), now)
}

func (g *authGuard) refuseLocked(client, user *authEntry, now time.Time) bool {
	for _, e := range []*authEntry{client, user} {
		if e.isBlocked(now) {
			e.refused++
			return true
		}
	}
	return false
}

// lookup returns the entry of k, or nil. An entry whose block has ended
// is ended here (with its summary) if its timer has not yet done it.
func (g *authGuard) lookup(k authKey, now time.Time) *authEntry {
	el := g.byKey[k]
	if el == nil {
		return nil
	}
	e := el.Value.(*authEntry)
	g.lru.MoveToFront(el)
	if !e.until.IsZero() && !now.Before(e.until) {
		g.endBlock(e, now)
	}
	return e
}

// entry returns the entry of k, made if there is none.
func (g *authGuard) entry(k authKey, lim AuthFailLimit, now time.Time) *authEntry {
	if e := g.lookup(k, now); e != nil {
		return e
	}
	g.makeRoom(now, lim.Window)
	e := &authEntry{key: k, start: now}
	if !k.perUser {
		e.checks = make(map[auth.Key]*authCheck)
	}
	if g.byKey == nil {
		g.byKey = make(map[authKey]*list.Element)
	}
	g.byKey[k] = g.lru.PushFront(e)
	return e
}

// begin admits a password check of user's credentials (key) from ip: at
// once if a check of the same credentials from that client is running
// (the ticket then shares its result), or if the client and the pair are
// under their limits with this check counted; otherwise it waits for a
// running check to end and tries again. It returns errAuthBlocked when the
// client or the pair is blocked, and ctx's error when ctx ends first.
func (g *authGuard) begin(ctx context.Context, ip netip.Addr, user string, key auth.Key, lim AuthFailLimit) (*authTicket, error) {
	ck := clientKey(ip)
	g.mu.Lock()
	for {
		now := time.Now()
		ce := g.entry(authKey{client: ck}, lim, now)
		ce.waiting++ // so that making room for ue cannot drop ce
		ue := g.entry(authKey{ck, user, true}, lim, now)
		ce.waiting--
		if lim.enabled() && g.refuseLocked(ce, ue, now) {
			g.mu.Unlock()
			return nil, errAuthBlocked
		}
		if c := ce.checks[key]; c != nil {
			g.mu.Unlock()
			return &authTicket{client: ce, user: ue, key: key, check: c}, nil
		}
		if ce.inflight < maxChecksPerClient && (!lim.enabled() || ue.under(lim.Max) && ce.under(lim.MaxClient)) {
			c := &authCheck{done: make(chan struct{})}
			ce.checks[key] = c
			ce.inflight++
			ue.inflight++
			g.mu.Unlock()
			return &authTicket{client: ce, user: ue, key: key, check: c, leader: true}, nil
		}
		if ce.inflight == 0 {
			// Over a limit with nothing running whose end could
			// change that (a reload lowered the limit): refused.
			g.mu.Unlock()
			return nil, errAuthBlocked
		}
		if ce.changed == nil {
			ce.changed = make(chan struct{})
		}
		changed := ce.changed
		ce.waiting, ue.waiting = ce.waiting+1, ue.waiting+1
		g.mu.Unlock()
		var err error
		select {
		case <-changed:
		case <-ctx.Done():
			err = ctx.Err()
		}
		g.mu.Lock()
		ce.waiting, ue.waiting = ce.waiting-1, ue.waiting-1
		if err != nil {
			g.mu.Unlock()
			return nil, err
		}
	}
}

// finish ends an admitted attempt with err, the result of its check (the
// leader's), or waits for the leader's and takes that. A failure counts
// against the client and the pair and may start a block; a success is
// refused (errAuthBlocked) if a block began while it was being checked.
// The fields are added to the line of a block that begins (the listener of
// the attempt).
func (g *authGuard) finish(t *authTicket, err error, lim AuthFailLimit, fields ...zap.Field) error {
	if t.leader {
		g.mu.Lock()
		t.check.err = err
		close(t.check.done)
		delete(t.client.checks, t.key)
		t.client.inflight--
		t.user.inflight--
		if t.client.changed != nil {
			close(t.client.changed)
			t.client.changed = nil
		}
	} else {
		<-t.check.done
		err = t.check.err
		g.mu.Lock()
	}
	defer g.mu.Unlock()
	if !lim.enabled() || (err != nil && !errors.Is(err, auth.ErrBadCredentials)) {
		return err // a check that did not run (the handshake ended) is no failure
	}
	now := time.Now()
	if err == nil {
		if g.refuseLocked(t.client, t.user, now) {
			return errAuthBlocked
		}
		return nil
	}
	g.failed(t.user, lim.Max, lim, now, fields)
	g.failed(t.client, lim.MaxClient, lim, now, fields)
	return err
}

// makeRoom drops stale entries from the back of the list and, if the
// table is still full, the least recently seen ones without a check
// running (those are moved to the front: they are in use). Each entry is
// looked at at most once, so the cost per new entry stays constant on
// average.
func (g *authGuard) makeRoom(now time.Time, window time.Duration) {
	for n := g.lru.Len(); n > 0; n-- {
		el := g.lru.Back()
		e := el.Value.(*authEntry)
		switch {
		case e.busy():
			g.lru.MoveToFront(el)
		case g.lru.Len() < authTableSize && !e.stale(now, window):
			return
		default:
			if e.timer != nil {
				e.timer.Stop()
			}
			g.remove(el)
		}
	}
}

func (g *authGuard) remove(el *list.Element) {
	delete(g.byKey, el.Value.(*authEntry).key)
	g.lru.Remove(el)
}

// tracked is the number of remembered entries, for tests.
func (g *authGuard) tracked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lru.Len()
}
