package source

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"time"
)

// Seed selects an address from a pool (Pool.Pick).
type Seed uint64

// FlowSeed returns a random seed, from the runtime's per-thread ChaCha8
// generator: no lock and no allocation per flow.
func FlowSeed() Seed { return Seed(rand.Uint64()) }

// hashLabel separates this use of SHA-256 from any other; changing it
// would move every user and session to another address, so it carries a
// version.
const hashLabel = "ifsocks source_rotation v1\x00"

// KeySeed returns the seed of a user name, or of a user name and session
// key when key is not empty.
//
// The hash is SHA-256 of a fixed label, the name and the key: there is no
// secret, on purpose, so that every host with the same source_ips maps a
// user or session to the same address (a fleet behind a load balancer
// gives a session one address whichever host serves it). Anyone who knows
// the pool and the name can compute the address; stickiness is the goal,
// not secrecy. Names and keys are at most 255 bytes (RFC 1929), so the
// input fits the stack buffer and nothing is allocated.
func KeySeed(name, key string) Seed {
	var buf [len(hashLabel) + 2*256 + 1]byte
	b := append(buf[:0], hashLabel...)
	b = append(b, name...)
	if key != "" {
		b = append(b, 0)
		b = append(b, key...)
	}
	sum := sha256.Sum256(b)
	return Seed(binary.BigEndian.Uint64(sum[:8]))
}

// KeyHash is what the flow log shows of a session key: the first 8 bytes
// of its SHA-256, in hex, enough to tell sessions apart and find a
// session's flows without logging the key.
func KeyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	const hexDigits = "0123456789abcdef"
	var out [16]byte
	for i, c := range sum[:8] {
		out[2*i], out[2*i+1] = hexDigits[c>>4], hexDigits[c&15]
	}
	return string(out[:])
}

// stream is splitmix64: a fast, well-mixed sequence from one seed, so one
// 64-bit seed yields the several draws a pick needs.
type stream struct{ s uint64 }

func rng(seed Seed) stream { return stream{uint64(seed)} }

func (r *stream) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// localTTL is how long a local-route check of an entry is trusted. Short,
// so that a route added or removed takes effect soon; long enough that a
// busy pool asks the kernel a few times a second at most.
const localTTL = 2 * time.Second

// Local reports whether the entry at index i (from Pick) of the family of
// a is local to the host, asking isLocal about a when the last answer for
// the entry is older than localTTL. An address inside a prefix stands for
// the whole prefix: a local route covers all of it or none.
func (p *Pool) Local(a netip.Addr, i int, now time.Time, isLocal func(netip.Addr) bool) bool {
	c := p.fam[famIndex(a.Is4())].entries[i].local
	t := now.UnixNano()
	if last := c.checked.Load(); last != 0 && t-last < int64(localTTL) {
		return c.ok.Load()
	}
	ok := isLocal(a)
	c.ok.Store(ok)
	c.checked.Store(t)
	return ok
}
