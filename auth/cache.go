package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"sync"
	"time"
)

// cache remembers successful verifications so a client opening a
// connection per request does not pay bcrypt each time.
//
// Entries are keyed by HMAC-SHA256(key, len(name) name password) with a random key
// made at start: the cache never holds a password or an unkeyed hash of one,
// so a memory dump does not give an offline dictionary target. Only
// successes are stored, entries expire after ttl, and the map never grows
// past size entries.
type cache struct {
	keyer
	ttl  time.Duration
	size int

	mu      sync.Mutex
	entries map[Key]time.Time // expiry
}

func newCache(ttl time.Duration, size int) *cache {
	return &cache{keyer: newKeyer(), ttl: ttl, size: size, entries: make(map[Key]time.Time)}
}

// keyer makes the cache keys of credentials: HMAC-SHA256 under a random
// key made at start.
type keyer struct {
	secret [32]byte
	// macs holds keyed HMAC states with a scratch buffer: a login (one
	// per connection for clients that open one per request) then costs
	// no allocation for its key.
	macs *sync.Pool
}

// keyMAC is a pooled HMAC keyed with the secret, and a buffer for its
// input.
type keyMAC struct {
	h   hash.Hash
	buf []byte
}

func newKeyer() keyer {
	k := keyer{macs: new(sync.Pool)}
	if _, err := rand.Read(k.secret[:]); err != nil {
		// crypto/rand does not fail on Linux since 3.17 (getrandom);
		// a zero key would make the cache keys guessable, so stop.
		panic("auth: crypto/rand: " + err.Error())
	}
	secret := k.secret // the pool's own copy: keyer is copied by value
	k.macs.New = func() any { return &keyMAC{h: hmac.New(sha256.New, secret[:]), buf: make([]byte, 0, 128)} }
	return k
}

func (c *keyer) key(name, password string) Key {
	m := c.macs.Get().(*keyMAC)
	// The name goes in with its length so that no two (name, password)
	// pairs give the same input: both may contain any byte.
	b := append(m.buf[:0], byte(len(name)>>8), byte(len(name)))
	b = append(append(b, name...), password...)
	m.h.Reset()
	m.h.Write(b)
	var k Key
	m.h.Sum(k[:0])
	clear(b) // the password does not stay in the pool
	if cap(b) <= maxKeyBuf {
		m.buf = b[:0]
		c.macs.Put(m)
	}
	return k
}

// maxKeyBuf bounds the input buffer a pooled keyMAC keeps: a longer
// login (HTTP Basic allows any length) is keyed, then its buffer dropped.
const maxKeyBuf = 1024

func (c *cache) hit(k Key) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.entries[k]
	if ok && now.After(exp) {
		delete(c.entries, k)
		return false
	}
	return ok
}

func (c *cache) put(k Key) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.size {
		c.evict(now)
	}
	c.entries[k] = now.Add(c.ttl)
}

// evict drops expired entries, then, if the cache is still full, arbitrary
// ones (map order is random) until there is room. Losing an entry only costs
// one bcrypt later.
func (c *cache) evict(now time.Time) {
	for k, exp := range c.entries {
		if now.After(exp) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) < c.size {
			break
		}
		delete(c.entries, k)
	}
}

// len is the number of cached entries, for tests.
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
