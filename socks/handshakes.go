package socks

import "net/netip"

// Handshake caps. A connection in its handshake (accepted, request not yet
// read) counts in up to three groups: its client (clientKey: the IPv4
// address or the IPv6 /64), for IPv6 its /56 too (what a provider gives one
// customer site, 256 /64s: without it one site could hold 256 times the
// per-client cap), and the whole server. When a new connection finds a
// group at its cap, it takes the place of the group's handshake that has
// waited longest without progress — first those that have sent nothing,
// then the least recently active — so one silent or hostile program
// cannot lock out every client behind the same address (a NAT) or the
// whole server. A handshake whose password is being checked (or waits
// for its check) has done all a client can do and is never evicted; only
// when no handshake of the group can be evicted is the new connection
// closed.

// Group levels of a handshake.
const (
	levelClient = iota // clientKey
	levelPrefix        // IPv6 /56
	levelServer        // every connection
	levels
)

// prefixCapFactor: a /56 may hold this many times max_handshakes_per_ip.
const prefixCapFactor = 4

// levelReasons name a level in metrics and logs (the reason a connection
// was refused or another evicted).
var levelReasons = [levels]string{"handshakes_per_ip", "handshakes_per_prefix", "max_handshakes"}

// Handshake states (serverConn.hsState).
const (
	hsNone      uint32 = iota // not tracked, or given back
	hsIdle                    // nothing received yet
	hsActive                  // bytes received, credentials not complete
	hsProtected               // credentials read: not evictable
	hsEvicted                 // closed to make room; its slot is given back
)

// hsList is an intrusive list of connections of one group in one state,
// linked through serverConn.hsLinks[level]: no allocation per connection.
type hsList struct{ head, tail *serverConn }

type hsLink struct{ prev, next *serverConn }

func (l *hsList) pushBack(sc *serverConn, lv int) {
	sc.hsLinks[lv] = hsLink{prev: l.tail}
	if l.tail != nil {
		l.tail.hsLinks[lv].next = sc
	} else {
		l.head = sc
	}
	l.tail = sc
}

func (l *hsList) remove(sc *serverConn, lv int) {
	k := sc.hsLinks[lv]
	if k.prev != nil {
		k.prev.hsLinks[lv].next = k.next
	} else {
		l.head = k.next
	}
	if k.next != nil {
		k.next.hsLinks[lv].prev = k.prev
	} else {
		l.tail = k.prev
	}
	sc.hsLinks[lv] = hsLink{}
}

// hsGroup is the handshakes of one client, one /56 or the server.
type hsGroup struct {
	key    netip.Addr
	n      int    // handshakes counted, evictable or not
	idle   hsList // evictable, nothing received; oldest first
	active hsList // evictable, least recent progress first
}

func (g *hsGroup) list(state uint32) *hsList {
	if state == hsIdle {
		return &g.idle
	}
	return &g.active
}

// victim is the group's handshake to evict first, or nil.
func (g *hsGroup) victim() *serverConn {
	if g.idle.head != nil {
		return g.idle.head
	}
	return g.active.head
}

// hsTracker counts and orders the handshakes in progress. Its methods are
// called with limitState.hsMu held.
type hsTracker struct {
	groups [levelServer]map[netip.Addr]*hsGroup
	server hsGroup
	free   []*hsGroup // given-back groups, reused: no allocation per client
}

// hsCaps are the caps of the three levels; 0 means none.
type hsCaps [levels]int

func capsOf(l *Limits) hsCaps {
	return hsCaps{l.MaxHandshakesPerIP, prefixCapFactor * l.MaxHandshakesPerIP, l.MaxHandshakes}
}

// admit counts sc, which comes from client, in its groups. A group at its
// cap first gives up its victim; the victims (to be closed by the caller)
// are appended to evicted, with the level of each. If a group at its cap
// has no victim, sc is not counted and admit returns that level and false.
func (t *hsTracker) admit(sc *serverConn, client netip.Addr, caps hsCaps, evicted []hsEviction) ([]hsEviction, int, bool) {
	var groups [levels]*hsGroup
	key := clientKey(client)
	if caps[levelClient] > 0 {
		groups[levelClient] = t.group(levelClient, key)
	}
	if key.Is6() && caps[levelPrefix] > 0 {
		p, _ := key.Prefix(56)
		groups[levelPrefix] = t.group(levelPrefix, p.Addr())
	}
	groups[levelServer] = &t.server // counted even without a cap, for the gauge
	// Refuse, evicting nothing, if a group at its cap has no victim.
	for lv, g := range groups {
		if g != nil && caps[lv] > 0 && g.n >= caps[lv] && g.victim() == nil {
			for lv, g := range groups {
				t.drop(lv, g)
			}
			return evicted, lv, false
		}
	}
	// An eviction for one group also makes room in the victim's other
	// groups, so each group is looked at again.
	// Groups a victim leaves empty are dropped only after sc is counted:
	// one of them may be sc's own.
	var emptied [levels][levels]*hsGroup
	for lv, g := range groups {
		if g == nil || caps[lv] <= 0 || g.n < caps[lv] {
			continue
		}
		v := g.victim()
		emptied[lv] = v.hsGroups
		t.release(v, hsEvicted, false)
		evicted = append(evicted, hsEviction{v, lv})
	}
	for lv, g := range groups {
		if g != nil {
			g.n++
			g.idle.pushBack(sc, lv)
		}
	}
	sc.hsGroups = groups
	sc.hsState.Store(hsIdle)
	for _, gs := range emptied {
		for lv, g := range gs {
			t.drop(lv, g)
		}
	}
	return evicted, 0, true
}

// hsEviction is a connection evicted by admit, and the level whose cap
// made it go.
type hsEviction struct {
	sc    *serverConn
	level int
}

func (t *hsTracker) group(lv int, key netip.Addr) *hsGroup {
	if t.groups[lv] == nil {
		t.groups[lv] = make(map[netip.Addr]*hsGroup)
	}
	g := t.groups[lv][key]
	if g == nil {
		if n := len(t.free); n > 0 {
			g, t.free = t.free[n-1], t.free[:n-1]
		} else {
			g = new(hsGroup)
		}
		g.key = key
		t.groups[lv][key] = g
	}
	return g
}

// drop forgets an empty client or prefix group.
func (t *hsTracker) drop(lv int, g *hsGroup) {
	if g == nil || g.n > 0 || lv == levelServer || t.groups[lv][g.key] != g {
		return // in use, or already dropped
	}
	delete(t.groups[lv], g.key)
	*g = hsGroup{}
	if len(t.free) < 1024 {
		t.free = append(t.free, g)
	}
}

// progress moves sc to the back of its groups' active lists: bytes came.
func (t *hsTracker) progress(sc *serverConn) {
	st := sc.hsState.Load()
	if st != hsIdle && st != hsActive {
		return
	}
	for lv, g := range sc.hsGroups {
		if g != nil {
			g.list(st).remove(sc, lv)
			g.active.pushBack(sc, lv)
		}
	}
	sc.hsState.Store(hsActive)
}

// protect takes sc out of the eviction order (its password is being
// checked). It reports false if sc has been evicted.
func (t *hsTracker) protect(sc *serverConn) bool {
	st := sc.hsState.Load()
	switch st {
	case hsEvicted:
		return false
	case hsIdle, hsActive:
		for lv, g := range sc.hsGroups {
			if g != nil {
				g.list(st).remove(sc, lv)
			}
		}
		sc.hsState.Store(hsProtected)
	}
	return true
}

// release gives back sc's slots and leaves it in state to (hsNone, or
// hsEvicted); drop forgets the groups it leaves empty.
func (t *hsTracker) release(sc *serverConn, to uint32, drop bool) {
	st := sc.hsState.Load()
	if st == hsNone || st == hsEvicted {
		return
	}
	for lv, g := range sc.hsGroups {
		if g == nil {
			continue
		}
		if st != hsProtected {
			g.list(st).remove(sc, lv)
		}
		g.n--
		if drop {
			t.drop(lv, g)
		}
	}
	sc.hsGroups = [levels]*hsGroup{}
	sc.hsState.Store(to)
}

// count is the number of handshakes the server tracks (all, when any cap
// is set), for the metrics gauge and tests.
func (t *hsTracker) count() int { return t.server.n }

// evictedConn reports whether sc was closed to make room for another.
func evictedConn(sc *serverConn) bool { return sc.hsState.Load() == hsEvicted }
