// Package auth checks SOCKS5 username/password credentials (RFC 1929).
//
// It holds the users' secrets (bcrypt hashes or plaintext passwords), checks
// them in constant time and makes every failed check cost the same: an
// unknown user, a wrong plaintext password and a wrong password of a user
// whose hash is cheaper than the most expensive configured one all cost one
// bcrypt at that highest cost. Successful checks are cached (see cache.go) because bcrypt costs
// tens of milliseconds and clients open one connection per request. It knows
// nothing about interfaces or the SOCKS wire format.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

// ErrBadCredentials is returned by Verify for an unknown user or a wrong
// password; the two are deliberately indistinguishable.
var ErrBadCredentials = errors.New("invalid username or password")

// Account is one user's credential as configured. Exactly one of Hash
// (bcrypt) and Password (plaintext) is set.
type Account struct {
	Name     string
	Hash     string
	Password string
}

type secret struct {
	hash  []byte   // bcrypt, or nil
	cost  int      // of hash
	plain [32]byte // sha256 of a plaintext password, compared in constant time
}

// Store verifies credentials. It is safe for concurrent use and immutable
// apart from its cache; a reload builds a new Store.
type Store struct {
	users map[string]secret
	// dummy is verified for unknown users and after a wrong plaintext
	// password so that every failure costs one bcrypt at the highest
	// configured cost.
	dummy []byte
	// pad[c] is a hash of cost c, for every cost from the lowest
	// configured one to below the highest: a failed check of a cost-c
	// hash verifies pad[c], ..., pad[max-1] afterwards, whose work
	// (2^c + ... + 2^(max-1) = 2^max - 2^c rounds) brings it to that of
	// one check at the highest cost.
	pad              map[int][]byte
	maxCost, minCost int
	cache            *cache
	flight           singleflight.Group
}

// Options tune the verification cache.
type Options struct {
	CacheTTL  time.Duration // how long a successful check is remembered
	CacheSize int           // at most this many remembered checks
}

// Default cache settings: long enough that a client opening connections in
// a burst pays bcrypt once, short enough that a changed password (after a
// reload, which drops the cache anyway) or a leaked one stops working soon.
const (
	DefaultCacheTTL  = 5 * time.Minute
	DefaultCacheSize = 10000
)

// maxBcryptPassword is the longest password bcrypt hashes in full.
const maxBcryptPassword = 72

// NewStore builds a store from accounts. Hashes must already be valid
// bcrypt (config validates them).
func NewStore(accounts []Account, opt Options) (*Store, error) {
	if opt.CacheTTL <= 0 {
		opt.CacheTTL = DefaultCacheTTL
	}
	if opt.CacheSize <= 0 {
		opt.CacheSize = DefaultCacheSize
	}
	s := &Store{users: make(map[string]secret, len(accounts))}
	cost, low := 0, 0
	for _, a := range accounts {
		if _, dup := s.users[a.Name]; dup {
			return nil, fmt.Errorf("user %q: defined twice", a.Name)
		}
		var sec secret
		if a.Hash == "" && a.Password == "" {
			return nil, fmt.Errorf("user %q: no password", a.Name)
		}
		if a.Hash != "" {
			c, err := bcrypt.Cost([]byte(a.Hash))
			if err != nil {
				return nil, fmt.Errorf("user %q: password hash: %w", a.Name, err)
			}
			cost = max(cost, c)
			if low == 0 || c < low {
				low = c
			}
			sec.hash, sec.cost = []byte(a.Hash), c
		} else {
			sec.plain = sha256.Sum256([]byte(a.Password))
		}
		s.users[a.Name] = sec
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	// The dummy uses the highest configured cost: an unknown name must never
	// be cheaper to test than a real one.
	d, err := bcrypt.GenerateFromPassword([]byte("ifsocks-dummy"), cost)
	if err != nil {
		return nil, fmt.Errorf("dummy hash: %w", err)
	}
	s.dummy = d
	s.maxCost, s.minCost = cost, max(low, bcrypt.MinCost)
	if low == 0 {
		s.minCost = cost
	}
	s.pad = make(map[int][]byte, cost-s.minCost)
	for c := s.minCost; c < cost; c++ {
		h, err := bcrypt.GenerateFromPassword([]byte("ifsocks-pad"), c)
		if err != nil {
			return nil, fmt.Errorf("padding hash: %w", err)
		}
		s.pad[c] = h
	}
	s.cache = newCache(opt.CacheTTL, opt.CacheSize)
	return s, nil
}

// Costs returns the lowest and highest bcrypt cost of the hashes, 0, 0 when
// there is none; a hash that does not parse is skipped (config reports it).
// Differing costs are worth a warning: every failed check then costs as
// much as the highest, so the cheap hashes protect less than that CPU buys.
func Costs(hashes []string) (lowest, highest int) {
	for _, h := range hashes {
		c, err := bcrypt.Cost([]byte(h))
		if err != nil {
			continue
		}
		if lowest == 0 || c < lowest {
			lowest = c
		}
		highest = max(highest, c)
	}
	return lowest, highest
}

// Len is the number of users. A store with no users means the server runs
// without authentication.
func (s *Store) Len() int { return len(s.users) }

// Key identifies a name and password without holding either: an HMAC
// with a key made when the store was built. Attempts with the same Key are
// the same check.
type Key = [32]byte

// Verify checks name and password. It returns nil or ErrBadCredentials.
func (s *Store) Verify(name, password string) error {
	key, ok := s.Lookup(name, password)
	if ok {
		return nil
	}
	return s.Check(key, name, password)
}

// Lookup is the cheap half of Verify: the credentials' Key, and whether
// they were verified recently (then they are valid and no Check is
// needed).
func (s *Store) Lookup(name, password string) (Key, bool) {
	key := s.cache.key(name, password)
	return key, s.cache.hit(key)
}

// Check is the expensive half of Verify: it checks name and password with
// bcrypt (key from Lookup) and remembers a success. It returns nil or
// ErrBadCredentials.
func (s *Store) Check(key Key, name, password string) error {
	// Concurrent checks of the same credentials (a client opening many
	// connections at once) share one bcrypt computation.
	_, err, _ := s.flight.Do(string(key[:]), func() (any, error) {
		if err := s.verifySlow(name, password); err != nil {
			return nil, err
		}
		s.cache.put(key)
		return nil, nil
	})
	return err
}

// padFrom makes a failed check of a cost-c hash cost what one at the
// highest configured cost does (see Store.pad).
func (s *Store) padFrom(c int, password []byte) {
	for ; c < s.maxCost; c++ {
		_ = bcrypt.CompareHashAndPassword(s.pad[c], password)
	}
}

func (s *Store) verifySlow(name, password string) error {
	sec, ok := s.users[name]
	switch {
	case !ok:
		_ = bcrypt.CompareHashAndPassword(s.dummy, []byte(password))
		return ErrBadCredentials
	case sec.hash != nil:
		// bcrypt reads only the first 72 bytes; a longer password
		// would match any other with the same prefix. Refuse it, at
		// the usual cost.
		if len(password) > maxBcryptPassword {
			_ = bcrypt.CompareHashAndPassword(s.dummy, []byte(password[:maxBcryptPassword]))
			return ErrBadCredentials
		}
		if bcrypt.CompareHashAndPassword(sec.hash, []byte(password)) != nil {
			s.padFrom(sec.cost, []byte(password))
			return ErrBadCredentials
		}
		return nil
	default:
		got := sha256.Sum256([]byte(password))
		if subtle.ConstantTimeCompare(got[:], sec.plain[:]) != 1 {
			// Pay the bcrypt price on failure too, or a fast refusal
			// would reveal that the name exists with a plaintext password.
			_ = bcrypt.CompareHashAndPassword(s.dummy, []byte(password))
			return ErrBadCredentials
		}
		return nil
	}
}
