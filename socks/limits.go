package socks

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Limits are the server's abuse limits; a zero value disables each.
type Limits struct {
	// MaxHandshakesPerIP caps the connections of one client (see
	// clientKey) that have not yet finished their request. A connection
	// over it is closed at accept, before anything is read from it.
	MaxHandshakesPerIP int
	// AuthFail blocks clients that fail authentication too often.
	AuthFail AuthFailLimit
	// MaxConnections caps the server's concurrent flows (CONNECT tunnels
	// and UDP associations). Over it a request gets reply 0x01.
	MaxConnections int
}

// AuthFailLimit: Max failed authentications from one client within Window
// make the server refuse that client's attempts, unchecked, for Cooldown.
type AuthFailLimit struct {
	Max      int // 0 disables
	Window   time.Duration
	Cooldown time.Duration
}

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
	hs   map[netip.Addr]int // connections in handshake per client key

	// refusedLog lets one debug line a second through for connections
	// refused at accept; refused counts those since the last line.
	refusedLog rate.Sometimes
	refused    atomic.Int64

	guard authGuard

	flowMu sync.Mutex
	flows  int                   // all flows of the server
	users  map[string]*userFlows // by user name ("" without authentication)
}

// initLimits prepares the limit bookkeeping of a new server.
func (s *Server) initLimits(st *Settings) {
	s.lim.refusedLog = rate.Sometimes{Interval: time.Second}
	st.Metrics.AuthBlockedClients(func() int { return s.lim.guard.blockedCount(time.Now()) })
}

// admit takes a handshake slot for sc's client, or reports false when the
// client already has max_handshakes_per_ip connections in their
// handshake. Called from the accept loop, so a refusal costs no goroutine.
func (s *Server) admit(sc *serverConn) bool {
	limit := sc.st.Limits.MaxHandshakesPerIP
	ap := addrPortOf(sc.conn.RemoteAddr())
	if limit <= 0 || !ap.IsValid() {
		return true
	}
	key := clientKey(ap.Addr())
	l := &s.lim
	l.hsMu.Lock()
	n := l.hs[key]
	if n >= limit {
		l.hsMu.Unlock()
		s.refusedAtAccept(sc, key, limit)
		return false
	}
	if l.hs == nil {
		l.hs = make(map[netip.Addr]int)
	}
	l.hs[key] = n + 1
	l.hsMu.Unlock()
	sc.hsKey = key
	return true
}

// refusedAtAccept counts a connection closed by admit. The log line is
// debug and at most one a second: a flood must not flood the log too.
func (s *Server) refusedAtAccept(sc *serverConn, key netip.Addr, limit int) {
	sc.st.Metrics.ConnRefused("handshakes_per_ip")
	s.lim.refused.Add(1)
	s.lim.refusedLog.Do(func() {
		s.log.Debug("connection refused: client has too many connections in handshake",
			zap.String("client", clientName(key)), sc.listenerField(), sc.listenerNameField(), zap.Int("max_handshakes_per_ip", limit),
			zap.Int64("refused_since_last_line", s.lim.refused.Swap(0)))
	})
}

// endHandshake gives back sc's handshake slot, if it holds one. Called by
// sc's own goroutine when the request has been read and again, for
// connections that end earlier, by connDone.
func (s *Server) endHandshake(sc *serverConn) {
	if !sc.hsKey.IsValid() {
		return
	}
	l := &s.lim
	l.hsMu.Lock()
	if l.hs[sc.hsKey]--; l.hs[sc.hsKey] <= 0 {
		delete(l.hs, sc.hsKey)
	}
	l.hsMu.Unlock()
	sc.hsKey = netip.Addr{}
}
