package socks

import (
	"time"

	"go.uber.org/zap"
)

// Blocks of the auth-failure guard: how one begins (failed), ends (its
// timer, or a lookup after its cool-down: endBlock, with a summary line)
// or is lifted (clear, at a reload), and the count the metrics gauge reads.

// failed counts a failure in e and, when it is the one that reaches max
// within the window, blocks e for the cool-down: one warning, with the
// number of failures. Failures while e is blocked change nothing.
func (g *authGuard) failed(e *authEntry, max int, lim AuthFailLimit, now time.Time, extra []zap.Field) {
	if max <= 0 || e.isBlocked(now) {
		return
	}
	if !e.until.IsZero() || now.Sub(e.start) >= lim.Window {
		e.fails, e.start, e.until = 0, now, time.Time{}
	}
	e.fails++
	if e.fails < max {
		return
	}
	e.until, e.blocked, e.refused = now.Add(lim.Cooldown), now, 0
	if !g.stopped {
		until := e.until
		e.timer = time.AfterFunc(lim.Cooldown, func() { g.expire(e, until) })
	}
	g.metrics.AuthBlocked()
	fields := append([]zap.Field{zap.String("client", clientName(e.key.client)), zap.Int("failures", e.fails),
		zap.Duration("window", lim.Window), zap.Duration("cooldown", lim.Cooldown)}, extra...)
	if e.key.perUser {
		fields = append(fields, zap.String("user", logSafe(e.key.user)), zap.String("scope", "user"))
	} else {
		fields = append(fields, zap.String("scope", "client"))
	}
	g.log.Warn("client blocked after failed authentications", fields...)
}

// expire ends e's block that lasts until until, when its cool-down is
// over (e's timer). A timer that fired while its block was being ended
// otherwise finds a later block, or none, and leaves it.
func (g *authGuard) expire(e *authEntry, until time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped || !e.until.Equal(until) {
		return
	}
	g.endBlock(e, time.Now())
}

// endBlock ends e's block with a summary at warn: how many attempts it
// refused. The entry starts afresh.
func (g *authGuard) endBlock(e *authEntry, now time.Time) {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	fields := []zap.Field{zap.String("client", clientName(e.key.client)), zap.Int("refused", e.refused),
		zap.Duration("blocked_for", now.Sub(e.blocked))}
	if e.key.perUser {
		fields = append(fields, zap.String("user", logSafe(e.key.user)), zap.String("scope", "user"))
	} else {
		fields = append(fields, zap.String("scope", "client"))
	}
	g.log.Warn("authentication block ended", fields...)
	e.fails, e.start, e.until, e.refused = 0, now, time.Time{}, 0
}

// clear lifts every block and forgets every failure (a reload); checks
// running go on. It returns how many blocks were lifted and how many
// attempts they had refused.
func (g *authGuard) clear() (blocks, refused int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	for el := g.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*authEntry)
		if e.isBlocked(now) {
			blocks++
			refused += e.refused
		}
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
		e.fails, e.start, e.until, e.refused = 0, now, time.Time{}, 0
		if !e.busy() {
			g.remove(el)
		}
		el = next
	}
	return blocks, refused
}

// stop stops the block timers for good (the server is closing).
func (g *authGuard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	for el := g.lru.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*authEntry); e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
	}
}

// blockedCount is the number of blocks in force (clients, and clients
// with a user name), for the metrics gauge (read at scrape time).
func (g *authGuard) blockedCount(now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for el := g.lru.Front(); el != nil; el = el.Next() {
		if el.Value.(*authEntry).isBlocked(now) {
			n++
		}
	}
	return n
}
