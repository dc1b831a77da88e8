package auth

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// exampleHash is the cost-10 hash of "alice-password" from
// config.toml.example; a fixed hash saves generating one at cost 10.
const exampleHash = "$2a$10$Fyrgz6pVbgG.41YisShyMujbLLYt.wED9T3zvxdZ79RIlQUqYL7la"

// hashPassword returns a bcrypt hash of password at cost.
func hashPassword(tb testing.TB, password string, cost int) string {
	tb.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		tb.Fatalf("bcrypt: %v", err)
	}
	return string(h)
}

// withPrefix replaces the "$2a$" of a Go bcrypt hash with prefix.
func withPrefix(tb testing.TB, hash, prefix string) string {
	tb.Helper()
	if !strings.HasPrefix(hash, "$2a$") {
		tb.Fatalf("hash %q is not $2a$", hash)
	}
	return prefix + hash[len("$2a$"):]
}

// newStore builds a Store from accounts. Include one MinCost bcrypt account
// where timing is not the point: the dummy hash takes the highest
// configured cost, and a plaintext-only store gets bcrypt.DefaultCost.
func newStore(tb testing.TB, accounts []Account, opt Options) *Store {
	tb.Helper()
	s, err := NewStore(accounts, opt)
	if err != nil {
		tb.Fatalf("NewStore: %v", err)
	}
	return s
}

// cheapAccount makes the store's dummy hash MinCost.
func cheapAccount(tb testing.TB) Account {
	tb.Helper()
	return Account{Name: "cheap", Hash: hashPassword(tb, "cheap-password", bcrypt.MinCost)}
}

func TestVerify(t *testing.T) {
	s := newStore(t, []Account{
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
		{Name: "bob", Password: "bob-password"},
		{Name: "carol", Hash: hashPassword(t, "lower-carol", bcrypt.MinCost)},
		{Name: "Carol", Password: "upper-carol"},
	}, Options{})

	tests := []struct {
		name     string
		user     string
		password string
		ok       bool
	}{
		{"bcrypt right password", "alice", "alice-password", true},
		{"bcrypt wrong password", "alice", "bob-password", false},
		{"bcrypt password prefix", "alice", "alice-passwor", false},
		{"bcrypt password with trailing space", "alice", "alice-password ", false},
		{"bcrypt empty password", "alice", "", false},
		{"plaintext right password", "bob", "bob-password", true},
		{"plaintext wrong password", "bob", "alice-password", false},
		{"plaintext password prefix", "bob", "bob-passwor", false},
		{"plaintext password with suffix", "bob", "bob-password2", false},
		{"plaintext password other case", "bob", "Bob-password", false},
		{"plaintext empty password", "bob", "", false},
		{"unknown user", "mallory", "alice-password", false},
		{"unknown user empty password", "mallory", "", false},
		{"empty name", "", "bob-password", false},
		{"empty name and password", "", "", false},
		{"name in other case", "Alice", "alice-password", false},
		{"name in upper case", "BOB", "bob-password", false},
		{"lower-case carol own password", "carol", "lower-carol", true},
		{"upper-case Carol own password", "Carol", "upper-carol", true},
		{"lower-case carol with Carol's password", "carol", "upper-carol", false},
		{"upper-case Carol with carol's password", "Carol", "lower-carol", false},
		{"name with trailing NUL", "bob\x00", "bob-password", false},
	}
	// The second round runs with the successes cached: a cache entry must
	// not make any other pair succeed.
	for _, round := range []string{"cold cache", "warm cache"} {
		t.Run(round, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					err := s.Verify(tt.user, tt.password)
					switch {
					case tt.ok && err != nil:
						t.Errorf("Verify(%q, %q) = %v, want nil", tt.user, tt.password, err)
					case !tt.ok && !errors.Is(err, ErrBadCredentials):
						t.Errorf("Verify(%q, %q) = %v, want ErrBadCredentials", tt.user, tt.password, err)
					}
				})
			}
		})
	}
}

// TestVerifyBcryptPrefixes proves that Go's bcrypt takes the minor version
// letter from the hash, so hashes made by tools writing $2b$ (OpenBSD,
// Python bcrypt) or $2y$ (PHP, htpasswd -B) verify.
func TestVerifyBcryptPrefixes(t *testing.T) {
	base := hashPassword(t, "secret", bcrypt.MinCost)
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		t.Run(prefix, func(t *testing.T) {
			h := withPrefix(t, base, prefix)
			s := newStore(t, []Account{{Name: "u", Hash: h}}, Options{})
			if err := s.Verify("u", "secret"); err != nil {
				t.Errorf("Verify with %s hash: %v", prefix, err)
			}
			if err := s.Verify("u", "wrong"); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("Verify wrong password with %s hash = %v, want ErrBadCredentials", prefix, err)
			}
		})
	}
}

func TestNewStoreErrors(t *testing.T) {
	tests := []struct {
		name     string
		accounts []Account
		want     []string
	}{
		{
			name:     "duplicate name",
			accounts: []Account{{Name: "a", Password: "x"}, {Name: "a", Password: "y"}},
			want:     []string{`"a"`, "twice"},
		},
		{
			name:     "invalid hash",
			accounts: []Account{cheapAccount(t), {Name: "b", Hash: "not-a-hash"}},
			want:     []string{`"b"`, "hash"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewStore(tt.accounts, Options{})
			if err == nil {
				t.Fatalf("NewStore = %v, want an error", s)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLen(t *testing.T) {
	s := newStore(t, []Account{cheapAccount(t), {Name: "p", Password: "x"}}, Options{})
	if n := s.Len(); n != 2 {
		t.Errorf("Len() = %d, want 2", n)
	}
}

// TestDummyCost checks structurally that an unknown user costs as much as
// the most expensive real one: the dummy hash has the highest cost.
func TestDummyCost(t *testing.T) {
	h4 := hashPassword(t, "a", bcrypt.MinCost)
	h6 := hashPassword(t, "b", bcrypt.MinCost+2)
	tests := []struct {
		name     string
		accounts []Account
		want     int
	}{
		{"single bcrypt user", []Account{{Name: "a", Hash: h4}}, bcrypt.MinCost},
		{"highest of several", []Account{{Name: "a", Hash: h4}, {Name: "b", Hash: h6}}, bcrypt.MinCost + 2},
		{"order does not matter", []Account{{Name: "b", Hash: h6}, {Name: "a", Hash: h4}}, bcrypt.MinCost + 2},
		{"plaintext users do not lower it", []Account{{Name: "p", Password: "x"}, {Name: "b", Hash: h6}}, bcrypt.MinCost + 2},
		{"plaintext only", []Account{{Name: "p", Password: "x"}}, bcrypt.DefaultCost},
		{"no users", nil, bcrypt.DefaultCost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, tt.accounts, Options{})
			got, err := bcrypt.Cost(s.dummy)
			if err != nil {
				t.Fatalf("dummy hash %q: %v", s.dummy, err)
			}
			if got != tt.want {
				t.Errorf("dummy cost = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestTimingParity checks loosely that a failure costs about the same
// whether the name is unknown, the bcrypt password is wrong or the
// plaintext password is wrong, so failures do not reveal which names
// exist. The bound is a factor of two to stay robust on a busy machine.
func TestTimingParity(t *testing.T) {
	s := newStore(t, []Account{
		{Name: "alice", Hash: exampleHash},
		{Name: "bob", Password: "bob-password"},
	}, Options{})

	const rounds = 5
	var unknown, wrongHash, wrongPlain []time.Duration
	measure := func(name, password string) time.Duration {
		t.Helper()
		start := time.Now()
		err := s.Verify(name, password)
		d := time.Since(start)
		if !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("Verify(%q, %q) = %v, want ErrBadCredentials", name, password, err)
		}
		return d
	}
	// Interleaved, so a slow phase of the machine hits all three alike.
	for i := range rounds {
		n := strconv.Itoa(i)
		unknown = append(unknown, measure("nobody-"+n, "pw-"+n))
		wrongHash = append(wrongHash, measure("alice", "wrong-"+n))
		wrongPlain = append(wrongPlain, measure("bob", "wrong-"+n))
	}
	ref := median(wrongHash)
	t.Logf("medians: wrong bcrypt password %v, unknown user %v, wrong plaintext password %v",
		ref, median(unknown), median(wrongPlain))
	for _, c := range []struct {
		name string
		got  time.Duration
	}{
		{"unknown user", median(unknown)},
		{"wrong plaintext password", median(wrongPlain)},
	} {
		if c.got < ref/2 {
			t.Errorf("%s takes %v, less than half of a wrong bcrypt password (%v): names can be enumerated", c.name, c.got, ref)
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestVerifyConcurrent runs many checks of the same credentials at once, as
// a client opening connections in a burst does. Run with -race.
func TestVerifyConcurrent(t *testing.T) {
	s := newStore(t, []Account{
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
	}, Options{})

	const n = 50
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- s.Verify("alice", "alice-password")
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Verify: %v", err)
		}
	}
	if n := s.cache.len(); n != 1 {
		t.Errorf("cache holds %d entries, want 1", n)
	}
}

// TestVerifyConcurrentMixed runs right and wrong passwords of the same user
// at once: sharing a computation must never hand one caller's result to
// another.
func TestVerifyConcurrentMixed(t *testing.T) {
	s := newStore(t, []Account{
		{Name: "alice", Hash: hashPassword(t, "alice-password", bcrypt.MinCost)},
	}, Options{})

	const n = 40
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			password, ok := "alice-password", i%2 == 0
			if !ok {
				password = "wrong-" + strconv.Itoa(i%4)
			}
			err := s.Verify("alice", password)
			if ok && err != nil {
				t.Errorf("Verify right password: %v", err)
			}
			if !ok && !errors.Is(err, ErrBadCredentials) {
				t.Errorf("Verify(%q) = %v, want ErrBadCredentials", password, err)
			}
		}()
	}
	close(start)
	wg.Wait()
}

// TestPadCosts checks structurally that a failed check of a cheaper hash
// is made up to the highest cost: a padding hash for every cost from the
// lowest configured one up to below the highest, so that 2^c plus the
// pads from c on is 2^highest.
func TestPadCosts(t *testing.T) {
	h4 := hashPassword(t, "a", bcrypt.MinCost)
	h7 := hashPassword(t, "b", bcrypt.MinCost+3)
	tests := []struct {
		name     string
		accounts []Account
		want     []int
	}{
		{"one cost", []Account{{Name: "a", Hash: h4}}, nil},
		{"costs 4 and 7", []Account{{Name: "a", Hash: h4}, {Name: "b", Hash: h7}}, []int{4, 5, 6}},
		{"plaintext only", []Account{{Name: "p", Password: "x"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, tt.accounts, Options{})
			var got []int
			for c := range 32 {
				h, ok := s.pad[c]
				if !ok {
					continue
				}
				if hc, err := bcrypt.Cost(h); err != nil || hc != c {
					t.Errorf("pad[%d] has cost %d, %v", c, hc, err)
				}
				got = append(got, c)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("pads for costs %v, want %v", got, tt.want)
			}
			if lo, hi := Costs([]string{h4, h7}); lo != 4 || hi != 7 {
				t.Errorf("Costs = %d, %d, want 4, 7", lo, hi)
			}
		})
	}
}
