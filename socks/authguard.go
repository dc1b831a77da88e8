package socks

import (
	"container/list"
	"errors"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// errAuthBlocked: the client is in its auth_fail_cooldown; its
// credentials were not checked.
var errAuthBlocked = errors.New("client blocked after too many failed authentications (auth_fail_limit)")

// authTableSize bounds the clients whose failures are remembered. An entry
// is about a hundred bytes, so the table stays under a few megabytes
// whatever the number of addresses an attacker uses. Past it the least
// recently seen client is forgotten: an attacker that cycles through more
// clients than this can shorten its own blocks, but each of those
// clients still pays bcrypt for its first auth_fail_limit tries.
const authTableSize = 16384

// authGuard remembers failed authentications per client (clientKey) and
// blocks clients that fail auth_fail_limit times within auth_fail_window.
//
// A success does not clear the count: a client holding one valid account
// could otherwise interleave successes to try passwords of another without
// end. Entries whose window and cool-down have passed are dropped as new
// clients arrive (they sit at the back of the LRU list).
type authGuard struct {
	mu   sync.Mutex
	byIP map[netip.Addr]*list.Element // of *authEntry
	lru  list.List                    // front: most recently seen
}

type authEntry struct {
	key   netip.Addr
	fails int       // failures since start
	start time.Time // start of the window
	until time.Time // end of the cool-down; zero when not blocked
}

// stale reports whether e no longer matters: its window has passed with
// no block, or its block has ended.
func (e *authEntry) stale(now time.Time, window time.Duration) bool {
	if e.until.IsZero() {
		return now.Sub(e.start) >= window
	}
	return !now.Before(e.until)
}

// blocked reports whether the client at ip is in its cool-down.
func (g *authGuard) blocked(ip netip.Addr, lim AuthFailLimit, now time.Time) bool {
	if lim.Max <= 0 || !ip.IsValid() {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	el := g.byIP[clientKey(ip)]
	if el == nil {
		return false
	}
	e := el.Value.(*authEntry)
	switch {
	case e.until.IsZero():
		return false
	case now.Before(e.until):
		g.lru.MoveToFront(el)
		return true
	}
	g.remove(el) // the cool-down is over: the client starts afresh
	return false
}

// failed records a failed authentication from ip. When it is the one that
// reaches lim.Max within lim.Window, the client is blocked for
// lim.Cooldown and failed returns the number of failures, so that the
// block is logged once; otherwise 0. Failures of checks that were already
// running when the block began change nothing.
func (g *authGuard) failed(ip netip.Addr, lim AuthFailLimit, now time.Time) int {
	if lim.Max <= 0 || !ip.IsValid() {
		return 0
	}
	key := clientKey(ip)
	g.mu.Lock()
	defer g.mu.Unlock()
	var e *authEntry
	if el := g.byIP[key]; el != nil {
		e = el.Value.(*authEntry)
		g.lru.MoveToFront(el)
		switch {
		case !e.until.IsZero() && now.Before(e.until):
			return 0
		case e.stale(now, lim.Window):
			*e = authEntry{key: key, start: now}
		}
	} else {
		g.makeRoom(now, lim.Window)
		e = &authEntry{key: key, start: now}
		if g.byIP == nil {
			g.byIP = make(map[netip.Addr]*list.Element)
		}
		g.byIP[key] = g.lru.PushFront(e)
	}
	e.fails++
	if e.fails < lim.Max {
		return 0
	}
	e.until = now.Add(lim.Cooldown)
	return e.fails
}

// makeRoom drops stale entries from the back of the list and, if the
// table is still full, the least recently seen one. Each entry is dropped
// at most once, so the cost per new client stays constant on average.
func (g *authGuard) makeRoom(now time.Time, window time.Duration) {
	for el := g.lru.Back(); el != nil; el = g.lru.Back() {
		if g.lru.Len() < authTableSize && !el.Value.(*authEntry).stale(now, window) {
			return
		}
		g.remove(el)
	}
}

func (g *authGuard) remove(el *list.Element) {
	delete(g.byIP, el.Value.(*authEntry).key)
	g.lru.Remove(el)
}

// blockedCount is the number of clients in their cool-down, for the
// metrics gauge (read at scrape time).
func (g *authGuard) blockedCount(now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for el := g.lru.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*authEntry); !e.until.IsZero() && now.Before(e.until) {
			n++
		}
	}
	return n
}

// tracked is the number of remembered clients, for tests.
func (g *authGuard) tracked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lru.Len()
}

// authFailed records a failed authentication of sc's client and, when it
// starts a block, logs it: one warning per block, with the client and the
// number of failures.
func (sc *serverConn) authFailed(client netip.Addr) {
	lim := sc.st.Limits.AuthFail
	n := sc.srv.lim.guard.failed(client, lim, time.Now())
	if n == 0 {
		return
	}
	sc.st.Metrics.AuthBlocked()
	sc.srv.log.Warn("client blocked after failed authentications",
		zap.String("client", clientName(clientKey(client))), sc.listenerField(), sc.listenerNameField(), zap.Int("failures", n),
		zap.Duration("window", lim.Window), zap.Duration("cooldown", lim.Cooldown))
}
