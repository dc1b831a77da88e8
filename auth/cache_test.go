package auth

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// referenceHash is a cost-12 bcrypt hash of "reference-password", fixed so
// the test does not spend a cost-12 computation making it.
const referenceHash = "$2a$12$bgaWfOikt5ta5SC56KcyAeMgFlGDij4o44qUoMD8Q.LnuHRoG9LJu"

// TestCacheSkipsBcrypt shows that a cached success costs no bcrypt: 1,000
// cached checks of a MinCost user take less time than one cost-12 compare.
// Without the cache they would take 1,000 MinCost compares, four times as
// long as one cost-12 compare at the least.
func TestCacheSkipsBcrypt(t *testing.T) {
	s := newStore(t, []Account{
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
	}, Options{})
	if err := s.Verify("alice", "alice-password"); err != nil {
		t.Fatalf("first Verify: %v", err)
	}

	start := time.Now()
	if err := bcrypt.CompareHashAndPassword([]byte(referenceHash), []byte("reference-password")); err != nil {
		t.Fatalf("reference hash: %v", err)
	}
	oneBcrypt := time.Since(start)

	start = time.Now()
	for i := range 1000 {
		if err := s.Verify("alice", "alice-password"); err != nil {
			t.Fatalf("cached Verify #%d: %v", i, err)
		}
	}
	cached := time.Since(start)
	t.Logf("1000 cached checks: %v; one cost-12 bcrypt: %v", cached, oneBcrypt)
	if cached >= oneBcrypt {
		t.Errorf("1000 cached checks took %v, not less than one cost-12 bcrypt (%v): the cache is not used", cached, oneBcrypt)
	}
	if n := s.cache.len(); n != 1 {
		t.Errorf("cache holds %d entries, want 1", n)
	}
}

// TestCacheOnlySuccesses checks that failures are never remembered and
// that a remembered success does not help a wrong password.
func TestCacheOnlySuccesses(t *testing.T) {
	s := newStore(t, []Account{
		cheapAccount(t),
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
		{Name: "bob", Password: "bob-password"},
	}, Options{})

	steps := []struct {
		name     string
		user     string
		password string
		ok       bool
		cached   int // entries after the step
	}{
		{"bcrypt wrong password", "alice", "wrong", false, 0},
		{"plaintext wrong password", "bob", "wrong", false, 0},
		{"unknown user", "mallory", "wrong", false, 0},
		{"bcrypt right password", "alice", "alice-password", true, 1},
		{"bcrypt wrong after right", "alice", "wrong", false, 1},
		{"bcrypt empty after right", "alice", "", false, 1},
		{"plaintext right password", "bob", "bob-password", true, 2},
		{"plaintext wrong after right", "bob", "wrong", false, 2},
		{"other user with cached password", "bob", "alice-password", false, 2},
		{"bcrypt right again", "alice", "alice-password", true, 2},
	}
	for _, st := range steps {
		err := s.Verify(st.user, st.password)
		switch {
		case st.ok && err != nil:
			t.Errorf("%s: Verify(%q, %q) = %v, want nil", st.name, st.user, st.password, err)
		case !st.ok && !errors.Is(err, ErrBadCredentials):
			t.Errorf("%s: Verify(%q, %q) = %v, want ErrBadCredentials", st.name, st.user, st.password, err)
		}
		if n := s.cache.len(); n != st.cached {
			t.Errorf("%s: cache holds %d entries, want %d", st.name, n, st.cached)
		}
		if !st.ok && s.cache.hit(s.cache.key(st.user, st.password)) {
			t.Errorf("%s: failed credentials are cached", st.name)
		}
	}
}

func TestCacheExpires(t *testing.T) {
	const ttl = 50 * time.Millisecond
	s := newStore(t, []Account{
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
	}, Options{CacheTTL: ttl})
	key := s.cache.key("alice", "alice-password")

	if err := s.Verify("alice", "alice-password"); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !s.cache.hit(key) {
		t.Fatal("success is not cached")
	}
	time.Sleep(2 * ttl)
	if s.cache.hit(key) {
		t.Errorf("entry still cached after %v with a TTL of %v", 2*ttl, ttl)
	}
	if n := s.cache.len(); n != 0 {
		t.Errorf("expired entry not removed on lookup: %d entries", n)
	}
	// After expiry the credentials are checked again, not refused.
	if err := s.Verify("alice", "wrong"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong password after expiry = %v, want ErrBadCredentials", err)
	}
	if err := s.Verify("alice", "alice-password"); err != nil {
		t.Errorf("right password after expiry: %v", err)
	}
	if !s.cache.hit(key) {
		t.Error("success after expiry is not cached again")
	}
}

func TestCacheSize(t *testing.T) {
	const size, users = 10, 50
	accounts := []Account{cheapAccount(t)}
	for i := range users {
		accounts = append(accounts, Account{Name: fmt.Sprintf("user%02d", i), Password: fmt.Sprintf("pw%02d", i)})
	}
	s := newStore(t, accounts, Options{CacheSize: size})

	// Twice: the second round finds most entries evicted and must still
	// accept every user.
	for round := range 2 {
		for i := range users {
			name, pw := fmt.Sprintf("user%02d", i), fmt.Sprintf("pw%02d", i)
			if err := s.Verify(name, pw); err != nil {
				t.Fatalf("round %d: Verify(%q): %v", round, name, err)
			}
			n := s.cache.len()
			if n > size {
				t.Fatalf("round %d, after %s: cache holds %d entries, more than CacheSize %d", round, name, n, size)
			}
			if n == 0 {
				t.Fatalf("round %d, after %s: cache is empty", round, name)
			}
		}
	}
	// The most recent success is always kept.
	if !s.cache.hit(s.cache.key("user49", "pw49")) {
		t.Error("the latest success was evicted")
	}
}

// TestCacheKeyDistinct checks that the cache key is injective in (name,
// password): moving bytes between the two must give another key, or a
// success for one pair would let the other pair in.
func TestCacheKeyDistinct(t *testing.T) {
	s := newStore(t, []Account{cheapAccount(t)}, Options{})
	tests := []struct {
		name   string
		a1, b1 string // name, password
		a2, b2 string
	}{
		{"separator moves", "ab", "c", "a", "bc"},
		{"empty password", "abc", "", "ab", "c"},
		{"empty name", "", "abc", "a", "bc"},
		{"swapped", "alice", "bob", "bob", "alice"},
		{"NUL in name or password", "a\x00b", "c", "a", "b\x00c"},
		{"trailing NUL in name", "a\x00", "b", "a", "\x00b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k1, k2 := s.cache.key(tt.a1, tt.b1), s.cache.key(tt.a2, tt.b2)
			if k1 == k2 {
				t.Errorf("key(%q, %q) == key(%q, %q)", tt.a1, tt.b1, tt.a2, tt.b2)
			}
			if s.cache.key(tt.a1, tt.b1) != k1 {
				t.Errorf("key(%q, %q) is not deterministic", tt.a1, tt.b1)
			}
		})
	}
}

// TestCacheNameConfusion is the consequence of a non-injective key: after
// user "a" logs in, the name "a\x00b" (which does not exist) must not be
// accepted. SOCKS5 user names (RFC 1929) may hold any byte, NUL included.
func TestCacheNameConfusion(t *testing.T) {
	s := newStore(t, []Account{cheapAccount(t), {Name: "a", Password: "b\x00c"}}, Options{})
	if err := s.Verify("a", "b\x00c"); err != nil {
		t.Fatalf("Verify of the real user: %v", err)
	}
	if err := s.Verify("a\x00b", "c"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("Verify(%q, %q) of an unknown user = %v, want ErrBadCredentials", "a\x00b", "c", err)
	}
}

// TestCacheKeyPerStore checks that each Store has its own random HMAC key,
// so cache keys cannot be precomputed and do not carry over.
func TestCacheKeyPerStore(t *testing.T) {
	accounts := []Account{cheapAccount(t)}
	s1 := newStore(t, accounts, Options{})
	s2 := newStore(t, accounts, Options{})
	if s1.cache.secret == s2.cache.secret {
		t.Fatal("two stores share an HMAC key")
	}
	if s1.cache.secret == ([32]byte{}) {
		t.Fatal("HMAC key is zero")
	}
	if s1.cache.key("alice", "pw") == s2.cache.key("alice", "pw") {
		t.Error("two stores give the same cache key for the same credentials")
	}
}
