package socks

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/metrics"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// dropReason says why a datagram was not relayed.
type dropReason int

const (
	dropNone        dropReason = iota
	dropForeign                // not from the client's address and port
	dropFragment               // FRAG != 0
	dropMalformed              // bad header
	dropTooLarge               // over udp_max_datagram
	dropResolve                // destination name did not resolve
	dropDenied                 // destination refused by policy
	dropNoRoute                // no outbound socket for the destination's family
	dropSendFailed             // sendto failed
	dropUnsolicited            // reply from an address the client never sent to
	dropRateLimit              // over the user's rate_limit
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"", "foreign_source", "fragmented", "malformed", "too_large",
	"resolve_failed", "denied", "no_route", "send_failed", "unsolicited",
	"rate_limit",
}

// String is the reason's name in logs (and, later, metrics labels).
func (r dropReason) String() string { return dropNames[r] }

// udpStats counts an association's traffic; updated from its goroutines.
// Each count also goes to the server's metrics as it happens, so a long
// association shows up before it ends.
type udpStats struct {
	dgramsUp, bytesUp     atomic.Int64
	dgramsDown, bytesDown atomic.Int64
	dropped               [numDropReasons]atomic.Int64

	metrics  *metrics.Metrics
	counters *metrics.UDPCounters
	acct     *accounting.Counter // the user's accounting; nil when off
}

// up counts dgrams datagrams sent upstream, n payload bytes in all: once
// per batch, so that the atomic adds are not paid per datagram.
func (s *udpStats) up(dgrams, n int) {
	if dgrams == 0 {
		return
	}
	s.dgramsUp.Add(int64(dgrams))
	s.bytesUp.Add(int64(n))
	s.counters.Up(dgrams, n)
	s.acct.AddUp(int64(n))
}

// down: see up.
func (s *udpStats) down(dgrams, n int) {
	if dgrams == 0 {
		return
	}
	s.dgramsDown.Add(int64(dgrams))
	s.bytesDown.Add(int64(n))
	s.counters.Down(dgrams, n)
	s.acct.AddDown(int64(n))
}

func (s *udpStats) drop(r dropReason) {
	s.dropped[r].Add(1)
	s.metrics.UDPDrop(r.String())
}

// MarshalLogObject lists the non-zero drop counts.
func (s *udpStats) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for r := dropReason(1); r < numDropReasons; r++ {
		if n := s.dropped[r].Load(); n > 0 {
			enc.AddInt64(r.String(), n)
		}
	}
	return nil
}

// log writes the association's one line at its end.
func (a *association) log(sc *serverConn, rec *record, bnd netip.AddrPort) {
	// Every open outbound socket is listed: with the source address the
	// kernel picked for its datagrams when that is known, else as the
	// socket is bound (unspecified address, its port), so the line
	// always says which sockets the datagrams left from.
	var locals []string
	for i, c := range a.out {
		if c == nil {
			continue
		}
		l := addrPortOfUDP(c.LocalAddr())
		if a.source[i].IsValid() {
			l = netip.AddrPortFrom(a.source[i], l.Port())
		}
		locals = append(locals, l.String())
	}
	outcome, lvl := outcomeOK, zap.InfoLevel
	cut := sc.srv.endReason(sc)
	switch {
	case cut != nil:
		outcome, lvl = cutOutcome(cut), zap.WarnLevel
	case a.idle.Load():
		outcome = outcomeIdle
	}
	// Bytes are already counted by the per-datagram counters.
	sc.st.Metrics.FlowDone(rec.protocol, rec.user, rec.iface, outcome, 0, 0)
	rec.up, rec.down = a.stats.bytesUp.Load(), a.stats.bytesDown.Load()
	rec.finish(RepSucceeded, outcome, cut)
	rec.write(sc.srv.log, lvl, "udp association", []zap.Field{
		zap.Stringer("relay", bnd),
		zap.String("local", strings.Join(locals, ",")),
		zap.Int64("dgrams_up", a.stats.dgramsUp.Load()),
		zap.Int64("dgrams_down", a.stats.dgramsDown.Load()),
		zap.Object("dropped", &a.stats),
	})
}

// Bounds on per-association state, so a client cannot grow it without
// limit by sending to many destinations or names.
const (
	maxSent     = 4096
	maxNames    = 256
	nameTTL     = time.Minute
	nameFailTTL = 5 * time.Second
)

// sentSet remembers where the client has sent, for the reply filter.
// Written by the upstream goroutine, read by the downstream ones.
type sentSet struct {
	filter ReplyFilter
	mu     sync.RWMutex
	ports  map[netip.AddrPort]struct{}
	addrs  map[netip.Addr]struct{}
	// evictions counts entries forgotten: an entry, once added, stays
	// until evicted, so a source found allowed stays allowed while this
	// has not moved (see sentCache).
	evictions atomic.Uint64
}

func newSentSet(f ReplyFilter) sentSet {
	return sentSet{filter: f, ports: make(map[netip.AddrPort]struct{}), addrs: make(map[netip.Addr]struct{})}
}

func (s *sentSet) add(ap netip.AddrPort) {
	if s.filter == FilterNone {
		return
	}
	s.mu.RLock()
	_, known := s.ports[ap]
	s.mu.RUnlock()
	if known {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// When full, forget an arbitrary entry: its replies are dropped
	// until the client sends there again.
	evictedPort := evictOne(s.ports, maxSent)
	if evictOne(s.addrs, maxSent) || evictedPort {
		s.evictions.Add(1)
	}
	s.ports[ap] = struct{}{}
	s.addrs[ap.Addr()] = struct{}{}
}

// evictOne deletes an arbitrary key of m when it holds limit, and reports
// whether it did.
func evictOne[K comparable](m map[K]struct{}, limit int) bool {
	if len(m) < limit {
		return false
	}
	for k := range m {
		delete(m, k)
		return true
	}
	return false
}

func (s *sentSet) allows(src netip.AddrPort) bool {
	if s.filter == FilterNone {
		return true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.filter == FilterAddress {
		_, ok := s.addrs[src.Addr()]
		return ok
	}
	_, ok := s.ports[src]
	return ok
}

// sentCache is one downstream goroutine's memory of the last source the
// reply filter allowed: replies from the one place the client talks to
// skip the set's lock and map lookup. It is right for as long as the set
// has evicted nothing since (an allowed entry leaves only by eviction).
type sentCache struct {
	src       netip.AddrPort
	evictions uint64
	ok        bool
}

func (c *sentCache) allows(s *sentSet, src netip.AddrPort) bool {
	if s.filter == FilterNone {
		return true
	}
	ev := s.evictions.Load()
	if c.ok && c.src == src && c.evictions == ev {
		return true
	}
	if !s.allows(src) {
		return false
	}
	c.src, c.evictions, c.ok = src, ev, true
	return true
}

// nameCache holds an association's resolutions, failures included (for
// less time) so a client cannot make every datagram cost a lookup.
type nameCache struct {
	m map[string]nameEntry
}

type nameEntry struct {
	addrs   []netip.Addr
	err     error
	expires time.Time
}

func newNameCache() nameCache { return nameCache{m: make(map[string]nameEntry)} }

func (c *nameCache) get(name string) ([]netip.Addr, error, bool) {
	e, ok := c.m[name]
	if !ok || time.Now().After(e.expires) {
		return nil, nil, false
	}
	return e.addrs, e.err, true
}

func (c *nameCache) put(name string, addrs []netip.Addr, err error) {
	ttl := nameTTL
	if err != nil {
		ttl = nameFailTTL
	}
	if len(c.m) >= maxNames {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < maxNames {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[name] = nameEntry{addrs: addrs, err: err, expires: time.Now().Add(ttl)}
}
