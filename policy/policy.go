// Package policy decides which destination addresses flows may reach.
//
// It is checked after name resolution, on every address a flow would
// connect or send to, so a name that resolves to loopback or to the cloud
// metadata address is refused like the literal address. It does not resolve
// names or know about users.
package policy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDenied is returned (wrapped in *DeniedError) for a refused destination.
var ErrDenied = errors.New("destination not allowed")

// DeniedError says why addr was refused.
type DeniedError struct {
	Addr   netip.Addr
	Reason string // the matching prefix, or "address of this host"
	// Key is the configuration setting that refused it (server.deny or
	// server.deny_own_addresses), named in the message so that whoever
	// reads the log line knows what to change.
	Key string
}

// Setting names of the rules, as in the configuration file.
const (
	KeyDeny    = "server.deny"
	KeyDenyOwn = "server.deny_own_addresses"
)

func (e *DeniedError) Error() string {
	switch e.Key {
	case KeyDeny:
		return fmt.Sprintf("destination %s not allowed: %s, listed in %s (the default list unless set; set it without this prefix to allow it)", e.Addr, e.Reason, e.Key)
	case KeyDenyOwn:
		return fmt.Sprintf("destination %s not allowed: %s (%s = true, the default; set it to false to allow it)", e.Addr, e.Reason, e.Key)
	}
	return fmt.Sprintf("destination %s not allowed: %s", e.Addr, e.Reason)
}

func (e *DeniedError) Unwrap() error { return ErrDenied }

// ownRefresh bounds how stale the list of the host's own addresses may be.
// Listing addresses is a netlink dump, too slow to do per flow.
const ownRefresh = 2 * time.Second

// Policy is an immutable set of rules plus a cache of the host's addresses.
// It is safe for concurrent use.
type Policy struct {
	deny    []netip.Prefix
	denyOwn bool
	// ownAddrs lists the host's addresses; replaced by tests.
	ownAddrs func() ([]netip.Addr, error)

	// own is the last listing of the host's addresses, read without a
	// lock on every check (every flow and every UDP datagram); refresh
	// serialises the listings.
	own     atomic.Pointer[ownSet]
	refresh sync.Mutex
}

type ownSet struct {
	addrs map[netip.Addr]bool
	time  time.Time
}

// New returns a policy refusing the deny prefixes and, if denyOwn, every
// address assigned to this host.
func New(deny []netip.Prefix, denyOwn bool) *Policy {
	return &Policy{deny: deny, denyOwn: denyOwn, ownAddrs: hostAddrs}
}

// Check returns nil if addr may be reached, else a *DeniedError.
func (p *Policy) Check(addr netip.Addr) error {
	// An IPv4-mapped IPv6 address reaches the IPv4 host: judge it as one,
	// or ::ffff:127.0.0.1 would slip past 127.0.0.0/8.
	a := addr.Unmap().WithZone("")
	if !a.IsValid() {
		return &DeniedError{Addr: addr, Reason: "no address"}
	}
	for _, pfx := range p.deny {
		if pfx.Contains(a) {
			return &DeniedError{Addr: addr, Reason: "in " + pfx.String(), Key: KeyDeny}
		}
	}
	if p.denyOwn && p.isOwn(a) {
		return &DeniedError{Addr: addr, Reason: "address of this host", Key: KeyDenyOwn}
	}
	return nil
}

func (p *Policy) isOwn(a netip.Addr) bool {
	cur := p.own.Load()
	if cur != nil && time.Since(cur.time) <= ownRefresh {
		return cur.addrs[a]
	}
	if cur != nil && !p.refresh.TryLock() {
		// Another check is listing the addresses right now; the list it
		// replaces is at most a listing's time older.
		return cur.addrs[a]
	}
	if cur == nil {
		p.refresh.Lock()
	}
	defer p.refresh.Unlock()
	if fresh := p.own.Load(); fresh != cur && fresh != nil {
		return fresh.addrs[a] // listed while we waited for the lock
	}
	addrs, err := p.ownAddrs()
	if err != nil {
		if cur == nil {
			// Cannot tell: fail closed for this check only.
			return true
		}
		return cur.addrs[a] // keep the last good listing
	}
	set := &ownSet{addrs: make(map[netip.Addr]bool, len(addrs)), time: time.Now()}
	for _, x := range addrs {
		set.addrs[x.Unmap().WithZone("")] = true
	}
	p.own.Store(set)
	return set.addrs[a]
}

func hostAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifaddrs))
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}
