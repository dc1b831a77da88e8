package socks

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
)

// Limits are the server's abuse limits; a zero value disables each.
type Limits struct {
	// MaxHandshakesPerIP caps the connections of one client (see
	// clientKey; an IPv6 /56 gets prefixCapFactor times as many) that
	// have not yet finished their request; MaxHandshakes those of all
	// clients. A new connection over a cap takes the place of a handshake
	// that has waited longest without progress or, if none may be
	// evicted, is closed at accept, before anything is read from it.
	MaxHandshakesPerIP int
	MaxHandshakes      int
	// AuthFail blocks clients that fail authentication too often.
	AuthFail AuthFailLimit
	// MaxConnections caps the server's concurrent flows (CONNECT tunnels
	// and UDP associations). Over it a request gets reply 0x01.
	MaxConnections int
}

// AuthFailLimit: Max failed authentications from one client with one user
// name, or MaxClient from one client whatever the names, within Window make
// the server refuse that pair's (or that client's) attempts, unchecked, for
// Cooldown. Checks in flight count as failures until they end.
type AuthFailLimit struct {
	Max       int // per (client, user name); 0: no limit
	MaxClient int // per client; 0: no limit
	Window    time.Duration
	Cooldown  time.Duration
}

// enabled reports whether failures are counted at all.
func (l AuthFailLimit) enabled() bool { return l.Max > 0 || l.MaxClient > 0 }

// Rate paces a user's traffic: BytesPerSec in each direction, shared by
// all the user's flows, with bursts of up to Burst bytes. The zero value
// means unpaced.
type Rate struct {
	BytesPerSec int64
	Burst       int
}

// clientKey is what the per-client limits count by: the IPv4 address, or
// the /64 of an IPv6 address, since one host (or one customer of a
// provider) usually holds a whole /64 and could otherwise rotate through
// it.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// clientName is a client key as logged: "192.0.2.7" or "2001:db8::/64".
func clientName(key netip.Addr) string {
	if key.Is6() {
		return netip.PrefixFrom(key, 64).String()
	}
	return key.String()
}

// limitState is the server's bookkeeping for the limits. It lives in the
// Server, not in Settings, so counts and blocks carry across reloads.
type limitState struct {
	hsMu sync.Mutex
	hs   hsTracker // connections in handshake (handshakes.go)

	// refusedLog lets one debug line a second through for connections
	// refused at accept; refused counts those since the last line.
	refusedLog rate.Sometimes
	refused    atomic.Int64
	// The same for handshakes evicted to make room.
	evictedLog rate.Sometimes
	evicted    atomic.Int64

	guard  authGuard
	checks *semaphore.Weighted // password checks running (login.go)
	// checksRunning counts the password checks past both bounds, for
	// the metrics gauge and tests.
	checksRunning atomic.Int64

	flowMu sync.Mutex
	flows  int                   // all flows of the server
	users  map[string]*userFlows // by user name ("" without authentication)
}

// initLimits prepares the limit bookkeeping of a new server.
func (s *Server) initLimits(st *Settings) {
	s.lim.refusedLog = rate.Sometimes{Interval: time.Second}
	s.lim.evictedLog = rate.Sometimes{Interval: time.Second}
	st.Metrics.Handshakes(func() int {
		s.lim.hsMu.Lock()
		defer s.lim.hsMu.Unlock()
		return s.lim.hs.count()
	})
	s.lim.guard.log, s.lim.guard.metrics = s.log, st.Metrics
	s.lim.checks = semaphore.NewWeighted(maxChecks())
	st.Metrics.AuthBlockedClients(func() int { return s.lim.guard.blockedCount(time.Now()) })
	st.Metrics.AuthChecksRunning(func() int { return int(s.lim.checksRunning.Load()) })
}

// admit counts sc in the handshake caps (handshakes.go) before anything
// is read from it. A group at its cap makes room by evicting its handshake
// that has waited longest without progress, closed here; admit reports
// false, and the caller closes sc, when a group at its cap has nothing to
// evict. Called from the accept loop, so a refusal costs no goroutine.
func (s *Server) admit(sc *serverConn) bool {
	caps := capsOf(&sc.st.Limits)
	ap := addrPortOf(sc.conn.RemoteAddr())
	if caps == (hsCaps{}) || !ap.IsValid() {
		return true
	}
	l := &s.lim
	var buf [levels]hsEviction
	l.hsMu.Lock()
	evicted, lv, ok := l.hs.admit(sc, ap.Addr(), caps, buf[:0])
	l.hsMu.Unlock()
	for _, e := range evicted {
		e.sc.conn.Close()
		s.evictedAtAccept(e, caps)
	}
	if !ok {
		s.refusedAtAccept(sc, ap.Addr(), lv, caps[lv])
	}
	return ok
}

// groupName is how a log line names the group of client at level lv.
func groupName(client netip.Addr, lv int) string {
	switch key := clientKey(client); {
	case lv == levelServer:
		return "all clients"
	case lv == levelPrefix:
		p, _ := key.Prefix(56)
		return p.String()
	default:
		return clientName(key)
	}
}

// refusedAtAccept counts a connection closed by admit. The log line is
// debug and at most one a second: a flood must not flood the log too.
func (s *Server) refusedAtAccept(sc *serverConn, client netip.Addr, lv, limit int) {
	sc.st.Metrics.ConnRefused(levelReasons[lv])
	s.lim.refused.Add(1)
	s.lim.refusedLog.Do(func() {
		s.log.Debug("connection refused: client has too many connections in handshake",
			zap.String("client", groupName(client, lv)), zap.String("reason", levelReasons[lv]),
			zap.Int("limit", limit), sc.listenerField(), sc.listenerNameField(),
			zap.Int64("refused_since_last_line", s.lim.refused.Swap(0)))
	})
}

// evictedAtAccept counts a handshake closed to make room, with a debug
// line at most once a second.
func (s *Server) evictedAtAccept(e hsEviction, caps hsCaps) {
	sc := e.sc
	sc.st.Metrics.HandshakeEvicted(levelReasons[e.level])
	s.lim.evicted.Add(1)
	s.lim.evictedLog.Do(func() {
		s.log.Debug("handshake closed to make room for a new connection",
			zap.String("client", groupName(sc.clientAddr().Addr(), e.level)), zap.String("reason", levelReasons[e.level]),
			zap.Int("limit", caps[e.level]), sc.listenerField(), sc.listenerNameField(),
			zap.Int64("evicted_since_last_line", s.lim.evicted.Swap(0)))
	})
}

// hsProgress notes that sc's client sent bytes in its handshake.
func (s *Server) hsProgress(sc *serverConn) {
	if st := sc.hsState.Load(); st != hsIdle && st != hsActive {
		return
	}
	s.lim.hsMu.Lock()
	s.lim.hs.progress(sc)
	s.lim.hsMu.Unlock()
}

// hsProtect takes sc out of the eviction order once its credentials have
// been read; false means sc was evicted.
func (s *Server) hsProtect(sc *serverConn) bool {
	if st := sc.hsState.Load(); st == hsNone || st == hsProtected {
		return true
	}
	s.lim.hsMu.Lock()
	defer s.lim.hsMu.Unlock()
	return s.lim.hs.protect(sc)
}

// endHandshake gives back sc's handshake slots, if it holds any. Called by
// sc's own goroutine when the request has been read and again, for
// connections that end earlier, by connDone.
func (s *Server) endHandshake(sc *serverConn) {
	if st := sc.hsState.Load(); st == hsNone || st == hsEvicted {
		return
	}
	s.lim.hsMu.Lock()
	s.lim.hs.release(sc, hsNone, true)
	s.lim.hsMu.Unlock()
}

// ClearAuthBlocks lifts every authentication block and forgets every
// counted failure (a reload does this: the operator's way to let a client
// in again). It logs what it lifted and returns the number of blocks.
func (s *Server) ClearAuthBlocks() int {
	blocks, refused := s.lim.guard.clear()
	if blocks > 0 {
		s.log.Warn("authentication blocks lifted by reload", zap.Int("blocks", blocks), zap.Int("refused", refused))
	}
	return blocks
}
