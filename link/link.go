// Package link follows the state of network interfaces through netlink
// (RTM_NEWLINK, RTM_DELLINK and address events) and reports changes of the
// interfaces it is told to watch.
//
// It exists so the daemon can log an egress interface going down, coming
// back or losing its addresses, keep the ifsocks_interface_up metric, and
// end the flows of an interface that went away at once instead of letting
// them stall until a timeout. It does not decide anything about flows.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package link

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// State is an interface's usability as an egress.
type State int

const (
	// Missing: no interface of that name.
	Missing State = iota
	// Down: administratively down or without carrier.
	Down
	// Up: up and running.
	Up
)

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return "missing"
}

// ChangeFunc is called, from the watcher's goroutine, when any interface
// changes state: flows may still run on an interface that is no longer
// watched (a reload moved its user elsewhere), and they must be cut too.
type ChangeFunc func(name string, old, new State)

// Watcher tracks every interface of the network namespace, reports every
// change to its ChangeFunc and logs those of the watched ones.
type Watcher struct {
	log      *zap.Logger
	onChange ChangeFunc

	primed atomic.Bool // State is known for every interface (Prime done)

	mu      sync.Mutex
	watched map[string]bool
	state   map[string]State   // by name; absent means Missing
	names   map[int]string     // by ifindex, to follow renames and deletions
	owners  map[netip.Addr]int // ifindex holding each local address
}

// New returns a watcher; call Run to start it.
func New(log *zap.Logger, onChange ChangeFunc) *Watcher {
	return &Watcher{
		log:      log,
		onChange: onChange,
		watched:  map[string]bool{},
		state:    map[string]State{},
		names:    map[int]string{},
		owners:   map[netip.Addr]int{},
	}
}

// Watch replaces the set of watched interface names (at start and on
// reload).
func (w *Watcher) Watch(names []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.watched = make(map[string]bool, len(names))
	for _, n := range names {
		w.watched[n] = true
	}
}

// Primed reports whether Prime has listed the interfaces, so that State
// can be relied on.
func (w *Watcher) Primed() bool { return w.primed.Load() }

// State returns the last known state of name.
func (w *Watcher) State(name string) State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state[name]
}

// update records the state of the interface with index idx. name is ""
// for a deletion.
func (w *Watcher) update(idx int, name string, st State) {
	type change struct {
		name     string
		old, new State
	}
	var changes []change
	w.mu.Lock()
	if prev, ok := w.names[idx]; ok && prev != name {
		// Renamed or deleted: the old name is gone.
		if old := w.state[prev]; old != Missing {
			delete(w.state, prev)
			changes = append(changes, change{prev, old, Missing})
		}
		delete(w.names, idx)
	}
	if name != "" {
		w.names[idx] = name
		if old := w.state[name]; old != st {
			w.state[name] = st
			changes = append(changes, change{name, old, st})
		}
	}
	watched := make([]bool, len(changes))
	for i, c := range changes {
		watched[i] = w.watched[c.name]
	}
	w.mu.Unlock()
	for i, c := range changes {
		if watched[i] {
			w.log.Info("egress interface state changed", zap.String("interface", c.name),
				zap.Stringer("from", c.old), zap.Stringer("to", c.new))
		}
		if w.onChange != nil {
			w.onChange(c.name, c.old, c.new)
		}
	}
}

// Owner returns the name of the interface that holds the local address a,
// as last reported by netlink: for egress = "ingress" (the interface of the
// address a client connected to) and for source_ip (the interface of the
// source address).
func (w *Watcher) Owner(a netip.Addr) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	idx, ok := w.owners[a.Unmap()]
	if !ok {
		return "", false
	}
	name, ok := w.names[idx]
	return name, ok
}

// addr records an address change and logs it when its interface is
// watched and the change is news (a resubscription lists known addresses
// again).
func (w *Watcher) addr(idx int, a netip.Addr, added bool) {
	a = a.Unmap()
	w.mu.Lock()
	old, known := w.owners[a]
	switch {
	case added && (!known || old != idx):
		w.owners[a] = idx
	case !added && known && old == idx:
		delete(w.owners, a)
	default:
		w.mu.Unlock()
		return
	}
	name := w.names[idx]
	watched := w.watched[name]
	w.mu.Unlock()
	if !watched {
		return
	}
	msg := "egress interface address removed"
	if added {
		msg = "egress interface address added"
	}
	w.log.Info(msg, zap.String("interface", name), zap.Stringer("address", a))
}

// Watched returns the state of every watched interface.
func (w *Watcher) Watched() map[string]State {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]State, len(w.watched))
	for n := range w.watched {
		out[n] = w.state[n]
	}
	return out
}
