package socks

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"

	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/source"
)

// Strategy picks among several egress interfaces; config parses it.
type Strategy = config.Strategy

// The strategies, under the names this package's code and tests use.
const (
	Failover   = config.StrategyFailover
	RoundRobin = config.StrategyRoundRobin
	Hash       = config.StrategyHash
)

// Egress says where the outbound sockets of a flow leave. The zero value
// is kernel routing.
type Egress struct {
	// Interfaces are the candidate interfaces, picked by Strategy.
	Interfaces []string
	Strategy   Strategy
	// Ingress: leave by the interface holding the address the client
	// connected to (decided per flow, so it follows address moves).
	Ingress bool
	// Sources is the pool of source addresses (source_ips; a source_ip
	// is a pool of one); each flow binds the address of its family that
	// Rotation picks. With one of Interfaces, the flows leave by it, with
	// IP_FREEBIND, and each picked address must be local by a route
	// (pool.go); else by the interface holding the picked address.
	Sources  *source.Pool
	Rotation config.Rotation
	// SessionSeparator splits login names of session rotation
	// ("alice-session-k1"); set when Rotation is config.RotationSession.
	SessionSeparator string
	// Mark is set as SO_MARK on every outbound socket when non-zero.
	Mark uint32
	// Turn is the round-robin position, shared by the flows of this
	// egress; nil uses one shared by the whole server.
	Turn *atomic.Uint64
}

// IsZero reports whether e is kernel routing.
func (e *Egress) IsZero() bool {
	return len(e.Interfaces) == 0 && !e.Ingress && e.Sources == nil && e.Mark == 0
}

// plan is the routes a flow may take, best first, and the interfaces
// passed over with why.
type plan struct {
	routes  []bind.Dialer
	skipped []string
}

// skip records that iface was passed over because of err.
func (p *plan) skip(st *Settings, iface string, err error) {
	p.skipped = append(p.skipped, iface+": "+skipDetail(err))
	st.Metrics.EgressSkipped(iface, skipReason(err))
}

// skipDetail is err without the "bind to interface" wrapping: the log
// line already names the interface.
func skipDetail(err error) string {
	var be *bind.Error
	if errors.As(err, &be) {
		return be.Err.Error()
	}
	return err.Error()
}

func skipReason(err error) string {
	switch {
	case errors.Is(err, bind.ErrInterfaceDown):
		return "down"
	case errors.Is(err, bind.ErrNoInterface):
		return "missing"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return "unreachable"
	}
	return "error"
}

// planEgress decides the routes of a flow. local is the address the
// client connected to (for Ingress); key identifies the target (for Hash);
// id is whose flow it is (for a pool's rotation). Unusable interfaces are
// left out and noted; when none is usable the error says why the first
// was not.
func (st *Settings) planEgress(eg *Egress, local netip.Addr, key string, turn *atomic.Uint64, id flowID) (plan, error) {
	var p plan
	switch {
	case eg.Sources != nil:
		route, err := st.planPool(eg, id)
		if err != nil {
			return p, err
		}
		p.routes = []bind.Dialer{route}
		return p, nil
	case eg.Ingress:
		name, ok := st.addrOwner(local)
		if !ok {
			return p, &bind.Error{Interface: "ingress", Err: fmt.Errorf("%w: no interface holds %s", bind.ErrNoInterface, local)}
		}
		if err := st.checkInterface(name); err != nil {
			return p, err
		}
		p.routes = []bind.Dialer{{Interface: name, Mark: eg.Mark}}
		return p, nil
	case len(eg.Interfaces) == 0:
		p.routes = []bind.Dialer{{Mark: eg.Mark}}
		return p, nil
	}
	var first error
	usable := make([]string, 0, len(eg.Interfaces))
	for _, name := range eg.Interfaces {
		if err := st.checkInterface(name); err != nil {
			if first == nil {
				first = err
			}
			p.skip(st, name, err)
			continue
		}
		usable = append(usable, name)
	}
	if len(usable) == 0 {
		return p, first
	}
	switch eg.Strategy {
	case RoundRobin:
		if eg.Turn != nil {
			turn = eg.Turn
		}
		n := int((turn.Add(1) - 1) % uint64(len(usable)))
		usable = append(usable[n:len(usable):len(usable)], usable[:n]...)
	case Hash:
		sortByScore(usable, key)
	}
	for _, name := range usable {
		p.routes = append(p.routes, bind.Dialer{Interface: name, Mark: eg.Mark})
	}
	return p, nil
}

// egressUse is how a flow's egress came out: the route it took and the
// interfaces passed over on the way, with why. When no route worked,
// route.Interface names the interface that failed ("" when none did).
// rotation names the source rotation of a pool of several addresses.
type egressUse struct {
	route    bind.Dialer
	skipped  []string
	rotation string
}

// openEgress plans the egress of id's flow (see planEgress) and calls open
// with each route in turn until it succeeds or fails for a reason other
// than the egress (see egressFailure), after which another interface
// would fare no better. It returns the last result and how the egress
// came out.
func openEgress[T any](st *Settings, eg *Egress, local netip.Addr, key string, turn *atomic.Uint64, id flowID, open func(bind.Dialer) (T, error)) (T, egressUse, error) {
	p, err := st.planEgress(eg, local, key, turn, id)
	var rotation string
	if eg.Sources != nil && eg.Sources.Several() {
		rotation = eg.Rotation.String()
	}
	if err != nil {
		var zero T
		return zero, egressUse{route: bind.Dialer{Interface: failedInterface(err)}, skipped: p.skipped, rotation: rotation}, err
	}
	for i, route := range p.routes {
		v, err := open(route)
		if err == nil || i == len(p.routes)-1 || !egressFailure(err) {
			return v, egressUse{route: route, skipped: p.skipped, rotation: rotation}, err
		}
		p.skip(st, route.Interface, err)
	}
	panic("unreachable: a plan has at least one route")
}

// sortByScore orders names by their rendezvous score for key, highest
// first; each score is computed once (FNV-1a of key, a zero byte, name).
func sortByScore(names []string, key string) {
	type scored struct {
		name  string
		score uint64
	}
	s := make([]scored, len(names))
	for i, n := range names {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(n))
		s[i] = scored{n, h.Sum64()}
	}
	slices.SortStableFunc(s, func(a, b scored) int { return cmp.Compare(b.score, a.score) })
	for i := range s {
		names[i] = s[i].name
	}
}

// egressFailure tells a failure of the way out (the interface cannot be
// bound, has no route to the network) — after which the next interface of
// a user with several is tried — from a failure of the target.
func egressFailure(err error) bool {
	var be *bind.Error
	return errors.As(err, &be) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENETDOWN)
}

// failedInterface names, for the flow log and metrics, the interface
// whose failure err reports ("" when none).
func failedInterface(err error) string {
	var be *bind.Error
	if errors.As(err, &be) {
		return be.Interface
	}
	return ""
}

func (st *Settings) addrOwner(a netip.Addr) (string, bool) {
	if st.AddrOwner != nil {
		return st.AddrOwner(a)
	}
	return bind.AddrOwner(a)
}
