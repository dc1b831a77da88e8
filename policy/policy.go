// Package policy decides which destination addresses flows may reach.
//
// It is checked after name resolution, on every address a flow would
// connect or send to, so a name that resolves to loopback or to the cloud
// metadata address is refused like the literal address. It does not resolve
// names or know about users.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
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
//
// An IPv6 address that carries an IPv4 address a router on the way will
// translate to (NAT64, 6to4) is judged twice: as itself and as each IPv4
// address it may carry. Otherwise 64:ff9b::7f00:1 would reach 127.0.0.1
// through a NAT64 gateway while 127.0.0.0/8 is denied.
func (p *Policy) Check(addr netip.Addr) error {
	// An IPv4-mapped IPv6 address reaches the IPv4 host: judge it as one,
	// or ::ffff:127.0.0.1 would slip past 127.0.0.0/8.
	a := addr.Unmap().WithZone("")
	if !a.IsValid() {
		return &DeniedError{Addr: addr, Reason: "no address"}
	}
	if reason, key := p.judge(a); reason != "" {
		return &DeniedError{Addr: addr, Reason: reason, Key: key}
	}
	if a.Is4() {
		return nil
	}
	emb, n := embedded(a)
	for _, e := range emb[:n] {
		if reason, key := p.judge(e.ipv4); reason != "" {
			return &DeniedError{Addr: addr, Reason: reason + " (IPv4 " + e.ipv4.String() + " embedded by " + e.scheme + ")", Key: key}
		}
	}
	return nil
}

// judge returns why a (unmapped, without zone) is refused and the setting
// that refuses it, or "".
func (p *Policy) judge(a netip.Addr) (reason, key string) {
	for _, pfx := range p.deny {
		if pfx.Contains(a) {
			return "in " + pfx.String(), KeyDeny
		}
	}
	if p.denyOwn && p.isOwn(a) {
		return "address of this host", KeyDenyOwn
	}
	return "", ""
}

// Translation prefixes whose addresses carry an IPv4 address.
var (
	// nat64WKP is the NAT64 well-known prefix (RFC 6052 section 2.1),
	// always used as a /96: the IPv4 address is the last 32 bits.
	nat64WKP = netip.MustParsePrefix("64:ff9b::/96")
	// nat64Local is the local-use NAT64 prefix (RFC 8215). An operator
	// may carve any RFC 6052 prefix length of /48 or longer out of it,
	// and the address alone does not say which.
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	// sixToFour is 6to4 (RFC 3056 section 2): 2002:V4ADDR::/48.
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// embeddedV4 is an IPv4 address carried in an IPv6 address, and the
// scheme that carries it.
type embeddedV4 struct {
	ipv4   netip.Addr
	scheme string
}

// maxEmbedded is the most IPv4 addresses one IPv6 address can carry here:
// one per RFC 6052 layout a local-use NAT64 prefix may use.
const maxEmbedded = 4

// localLayouts are the RFC 6052 layouts of the prefix lengths shorter than
// /96 that fit in the local-use /48: the bytes holding the IPv4 address
// (byte 8, the "u" octet, is skipped) and the first byte of the suffix.
var localLayouts = [...]struct {
	at     [4]int8
	suffix int8
}{
	{[4]int8{6, 7, 9, 10}, 11},   // /48
	{[4]int8{7, 9, 10, 11}, 12},  // /56
	{[4]int8{9, 10, 11, 12}, 13}, // /64
}

// embedded returns the IPv4 addresses a (an IPv6 address) carries by NAT64
// or 6to4, without allocating.
//
// The address alone does not say which RFC 6052 layout a local-use NAT64
// prefix (64:ff9b:1::/48) uses, so every reading that may be meant is
// returned and a policy refuses the address if any reading is refused:
// the /96 one (the last 32 bits) always, and each shorter layout whose
// "u" octet and suffix are zero, as RFC 6052 section 2.2 has them.
func embedded(a netip.Addr) (out [maxEmbedded]embeddedV4, n int) {
	b := a.As16()
	last32 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case nat64WKP.Contains(a):
		out[0] = embeddedV4{last32, "NAT64 64:ff9b::/96"}
		return out, 1
	case nat64Local.Contains(a):
		const via = "NAT64 64:ff9b:1::/48"
		out[0] = embeddedV4{last32, via}
		n = 1
		for _, l := range localLayouts {
			if b[8] != 0 || !zero(b[l.suffix:]) {
				continue
			}
			v4 := netip.AddrFrom4([4]byte{b[l.at[0]], b[l.at[1]], b[l.at[2]], b[l.at[3]]})
			out[n] = embeddedV4{v4, via}
			n++
		}
		return out, n
	case sixToFour.Contains(a):
		out[0] = embeddedV4{netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), "6to4 2002::/16"}
		return out, 1
	}
	return out, 0
}

func zero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
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
