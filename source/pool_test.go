package source_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/source"
)

func prefixes(tb testing.TB, s ...string) []netip.Prefix {
	tb.Helper()
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

// TestPickStaysInPool: every pick is an address of its family inside an
// entry, never a reserved one, for seeds from every rotation.
func TestPickStaysInPool(t *testing.T) {
	tests := []struct {
		name string
		pool []string
		is4  bool
		// bad reports an address the pick must never return.
		bad func(netip.Addr) bool
	}{
		{name: "single v4", pool: []string{"172.31.0.14/32"}, is4: true},
		{name: "v4 /28 without network and broadcast", pool: []string{"172.31.0.32/28"}, is4: true,
			bad: func(a netip.Addr) bool {
				return a == netip.MustParseAddr("172.31.0.32") || a == netip.MustParseAddr("172.31.0.47")
			}},
		{name: "v4 /31 keeps both", pool: []string{"10.0.0.0/31"}, is4: true},
		{name: "v6 /80 without anycast", pool: []string{"2001:db8:1:2::/80"},
			bad: func(a netip.Addr) bool { return a == netip.MustParseAddr("2001:db8:1:2::") }},
		{name: "v6 /64 without reserved IDs", pool: []string{"2001:db8:1:3::/64"},
			bad: func(a netip.Addr) bool {
				lo := a.As16()
				return lo[8] == 0xff && lo[9] == 0xff && lo[10] == 0xff && lo[11] == 0xff && lo[12] == 0xff && lo[13] == 0xff && lo[14] == 0xff && lo[15] >= 0x80
			}},
		{name: "v6 /48", pool: []string{"2001:db8:7::/48"}},
		{name: "mixed, v4 side", pool: []string{"172.31.0.14/32", "172.31.0.15/32", "2001:db8::/80"}, is4: true},
		{name: "mixed, v6 side", pool: []string{"172.31.0.14/32", "2001:db8::/80", "2001:db8:1::5/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := prefixes(t, tt.pool...)
			p := source.New(ps)
			for i := range 5000 {
				seed := source.FlowSeed()
				if i%2 == 1 {
					seed = source.KeySeed("user", string(rune('a'+i%26)))
				}
				a, idx := p.Pick(tt.is4, seed)
				if !a.IsValid() || a.Is4() != tt.is4 {
					t.Fatalf("pick %v: wrong family", a)
				}
				if !p.Entry(tt.is4, idx).Contains(a) {
					t.Fatalf("pick %v outside its entry %v", a, p.Entry(tt.is4, idx))
				}
				if tt.bad != nil && tt.bad(a) {
					t.Fatalf("pick %v is reserved", a)
				}
			}
		})
	}
}

// TestPickUniform: a pool of 4 addresses and a /30-sized prefix mixed with
// them get picks in proportion to their usable addresses (chi-squared
// bound, far from a false alarm at 20,000 draws).
func TestPickUniform(t *testing.T) {
	p := source.New(prefixes(t, "10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.0.4/32", "10.0.1.0/30"))
	const draws = 20000
	counts := map[netip.Addr]int{}
	for range draws {
		a, _ := p.Pick(true, source.FlowSeed())
		counts[a]++
	}
	// Usable: 4 singles + 2 of the /30 = 6.
	if len(counts) != 6 {
		t.Fatalf("picked %d distinct addresses, want 6: %v", len(counts), counts)
	}
	want := float64(draws) / 6
	var chi2 float64
	for _, n := range counts {
		d := float64(n) - want
		chi2 += d * d / want
	}
	// 5 degrees of freedom: P(chi2 > 25) < 0.0002.
	if chi2 > 25 {
		t.Errorf("chi2 = %.1f over %v", chi2, counts)
	}
}

// TestKeySeedStable: a user or session always maps to the same address
// of the same pool, whatever order the pool was written in; other names
// map elsewhere on a large prefix; Has and absent families.
func TestKeySeedStable(t *testing.T) {
	a := source.New(prefixes(t, "2001:db8::/80", "192.0.2.0/29"))
	b := source.New(prefixes(t, "192.0.2.0/29", "2001:db8::/80"))
	for _, name := range []string{"alice", "bob", "x-session-y"} {
		s := source.KeySeed(name, "")
		x, _ := a.Pick(false, s)
		y, _ := b.Pick(false, s)
		if x != y {
			t.Errorf("%s: %v in one pool, %v in the same pool written otherwise", name, x, y)
		}
	}
	alice, _ := a.Pick(false, source.KeySeed("alice", ""))
	bob, _ := a.Pick(false, source.KeySeed("bob", ""))
	s1, _ := a.Pick(false, source.KeySeed("alice", "s1"))
	s2, _ := a.Pick(false, source.KeySeed("alice", "s2"))
	if alice == bob || s1 == s2 || s1 == alice {
		t.Errorf("distinct keys collide: alice %v bob %v s1 %v s2 %v", alice, bob, s1, s2)
	}
	// Documented derivation: a change of label or hash moves every user.
	if got, want := source.KeySeed("alice", ""), source.Seed(0); got == want {
		t.Fatal("zero seed")
	}
	v4only := source.New(prefixes(t, "192.0.2.1/32"))
	if v4only.Has(false) || !v4only.Has(true) {
		t.Error("Has: wrong families")
	}
	if x, _ := v4only.Pick(false, source.FlowSeed()); x.IsValid() {
		t.Errorf("IPv6 pick from an IPv4 pool: %v", x)
	}
	if v4only.Several() || !a.Several() {
		t.Error("Several: wrong")
	}
}

// TestKeyHash: the logged form of a session key is stable, short and not
// the key.
func TestKeyHash(t *testing.T) {
	h := source.KeyHash("secret-session")
	if len(h) != 16 || h != source.KeyHash("secret-session") || h == source.KeyHash("other") {
		t.Errorf("KeyHash = %q", h)
	}
}

// TestLocalCache: the local check is asked once per TTL per entry.
func TestLocalCache(t *testing.T) {
	p := source.New(prefixes(t, "2001:db8::/80"))
	a, i := p.Pick(false, source.FlowSeed())
	calls := 0
	isLocal := func(netip.Addr) bool { calls++; return calls > 1 }
	now := time.Now()
	if p.Local(a, i, now, isLocal) {
		t.Fatal("first answer not used")
	}
	if p.Local(a, i, now.Add(time.Second), isLocal) || calls != 1 {
		t.Fatalf("cached answer not used: calls %d", calls)
	}
	if !p.Local(a, i, now.Add(3*time.Second), isLocal) || calls != 2 {
		t.Fatalf("stale answer not refreshed: calls %d", calls)
	}
}

// TestPickAllocs: picking costs no allocation, for a flow or a session.
func TestPickAllocs(t *testing.T) {
	p := source.New(prefixes(t, "10.0.0.0/28", "2001:db8::/80", "2001:db8:1::/64"))
	n := testing.AllocsPerRun(1000, func() {
		p.Pick(true, source.FlowSeed())
		p.Pick(false, source.KeySeed("alice", "k1"))
	})
	if n != 0 {
		t.Errorf("%v allocations per pick", n)
	}
}

func BenchmarkPick(b *testing.B) {
	p := source.New(prefixes(b, "2001:db8::/80"))
	for b.Loop() {
		p.Pick(false, source.FlowSeed())
	}
}
