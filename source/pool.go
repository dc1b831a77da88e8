// Package source picks the source address of a flow from a pool of
// addresses and prefixes (source_ips): uniformly at random per flow, or by
// a hash of the user name or of a session key.
//
// A pick costs no allocation and no system call: an address inside a
// prefix is built from random (or hashed) host bits, not taken from a
// precomputed list, so a /64 pool costs what a single address does. The
// package does not bind sockets (package bind does) nor decide which
// interface a pool leaves by (the egress plan does).
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package source

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"sort"
	"sync/atomic"
)

// maxWeight caps the share of one entry when the pick chooses among
// entries: a prefix with more usable addresses than this (an IPv6 /80 has
// 2^48) weighs as much as one with exactly this many. Both are far larger
// than the flows they will ever see, and the cap keeps the sum of up to
// config.MaxSourceIPs entries inside 64 bits.
const maxWeight = 1 << 48

// Pool is a set of source addresses, split by family. It is built once per
// configuration and read by every flow; only the local-route cache of its
// entries changes (atomically).
type Pool struct {
	fam [2]family // IPv4, IPv6
}

type family struct {
	entries []entry
	ends    []uint64 // cumulative weights: entries[i] covers [ends[i-1], ends[i])
}

// entry is one address or prefix of the pool.
type entry struct {
	prefix   netip.Prefix
	hostBits int
	// exact: the usable addresses are few enough (<= maxWeight) to be
	// numbered; offset (0 or 1) is the first usable host number.
	exact  bool
	offset uint64
	weight uint64
	local  *localCache // shared by copies of the entry
}

// New builds a pool from prefixes (single addresses as /32 or /128). The
// caller has checked that they are valid and do not overlap; their order
// does not matter to New's callers, since config sorts them.
func New(prefixes []netip.Prefix) *Pool {
	p := &Pool{}
	for _, pr := range prefixes {
		pr = pr.Masked()
		f := &p.fam[famIndex(pr.Addr().Is4())]
		e := entry{prefix: pr, hostBits: pr.Addr().BitLen() - pr.Bits(), local: new(localCache)}
		e.weight, e.offset, e.exact = usable(pr.Addr().Is4(), e.hostBits)
		var start uint64
		if n := len(f.ends); n > 0 {
			start = f.ends[n-1]
		}
		f.entries = append(f.entries, e)
		f.ends = append(f.ends, start+e.weight)
	}
	return p
}

// usable counts the addresses of a prefix with hostBits that a flow may
// use, capped at maxWeight (exact false past it), and the first usable host
// number. Excluded: the all-zeros host of an IPv6 prefix (the subnet-router
// anycast address, RFC 4291 section 2.6.1) and the network and broadcast
// addresses of an IPv4 prefix of /30 or shorter (RFC 3021 keeps both
// addresses of a /31). Past 64 host bits, the top 128 interface IDs of
// each /64 (reserved anycast, RFC 2526) are refused at pick time.
func usable(is4 bool, hostBits int) (weight, offset uint64, exact bool) {
	switch {
	case hostBits > 48:
		return maxWeight, 1, false
	case is4 && hostBits >= 2:
		return 1<<hostBits - 2, 1, true
	case !is4 && hostBits >= 2:
		return 1<<hostBits - 1, 1, true
	}
	return 1 << hostBits, 0, true
}

func famIndex(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

// Has reports whether the pool has addresses of the family.
func (p *Pool) Has(is4 bool) bool { return p != nil && len(p.fam[famIndex(is4)].entries) > 0 }

// Several reports whether the pool has more than one address, so that
// rotating among them means something.
func (p *Pool) Several() bool {
	n := 0
	for _, f := range p.fam {
		for _, e := range f.entries {
			if n += int(min(e.weight, 2)); n > 1 {
				return true
			}
		}
	}
	return false
}

// Prefixes lists the pool's entries, IPv4 first.
func (p *Pool) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, f := range p.fam {
		for _, e := range f.entries {
			out = append(out, e.prefix)
		}
	}
	return out
}

// Size is the number of usable addresses of the family, saturated at the
// largest uint64 (an IPv6 /64 alone has 2^64 - 1 - 128).
func (p *Pool) Size(is4 bool) uint64 {
	var n uint64
	for _, e := range p.fam[famIndex(is4)].entries {
		w := e.weight
		if !e.exact {
			if e.hostBits >= 64 {
				return ^uint64(0)
			}
			w = 1<<e.hostBits - 1
		}
		s, carry := bits.Add64(n, w, 0)
		if carry != 0 {
			return ^uint64(0)
		}
		n = s
	}
	return n
}

// Pick returns the address of the family that seed selects, and the index
// of its entry (for Local); an invalid address when the pool has none of
// that family. The same seed always gives the same address from the same
// pool; seeds spread uniformly over the usable addresses (entries weighed
// by their size, up to maxWeight).
func (p *Pool) Pick(is4 bool, seed Seed) (netip.Addr, int) {
	if p == nil {
		return netip.Addr{}, -1
	}
	f := &p.fam[famIndex(is4)]
	if len(f.entries) == 0 {
		return netip.Addr{}, -1
	}
	r := rng(seed)
	if !is4 {
		r.next() // the families draw from different points of the stream
	}
	// Multiply-shift maps 64 random bits onto [0, total) with a bias of
	// at most total/2^64, which is below 2^-4 for the largest pool.
	n, _ := bits.Mul64(r.next(), f.ends[len(f.ends)-1])
	i := sort.Search(len(f.ends), func(i int) bool { return f.ends[i] > n })
	e := &f.entries[i]
	if e.exact {
		start := uint64(0)
		if i > 0 {
			start = f.ends[i-1]
		}
		return e.host(0, e.offset+n-start), i
	}
	return e.randomHost(&r), i
}

// host returns the prefix's address plus the 128-bit host number hi:lo.
func (e *entry) host(hi, lo uint64) netip.Addr {
	a := e.prefix.Addr()
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(lo)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	l, carry := bits.Add64(binary.BigEndian.Uint64(b[8:]), lo, 0)
	h, _ := bits.Add64(binary.BigEndian.Uint64(b[:8]), hi, carry)
	binary.BigEndian.PutUint64(b[:8], h)
	binary.BigEndian.PutUint64(b[8:], l)
	return netip.AddrFrom16(b)
}

// randomHost draws host bits for a prefix too large to number (more than
// 48 host bits: IPv6 only), refusing the reserved ones: an interface ID
// of zero (the subnet-router anycast address of the prefix, or of a /64
// inside it) and the top 128 interface IDs (RFC 2526). A draw is refused
// with probability below 2^-40, so the loop's bound is never reached in
// practice; past it the first host is used, still a valid address.
func (e *entry) randomHost(r *stream) netip.Addr {
	for range 16 {
		lo, hi := r.next(), r.next()
		if e.hostBits < 64 {
			lo &= 1<<e.hostBits - 1
			hi = 0
		} else if e.hostBits < 128 {
			hi &= 1<<(e.hostBits-64) - 1
		}
		if lo == 0 || (e.hostBits >= 64 && lo >= ^uint64(0)-127) {
			continue
		}
		return e.host(hi, lo)
	}
	return e.host(0, 1)
}

// Entry returns the prefix of the entry at index i (from Pick).
func (p *Pool) Entry(is4 bool, i int) netip.Prefix {
	return p.fam[famIndex(is4)].entries[i].prefix
}

// localCache remembers whether an entry is local to the host (assigned, or
// covered by a route of type local), so that flows ask the kernel at most
// once per localTTL per entry.
type localCache struct {
	checked atomic.Int64 // unix nanoseconds of the last check; 0: never
	ok      atomic.Bool
}
