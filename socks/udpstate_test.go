package socks

import (
	"net/netip"
	"testing"
)

// TestSentCacheEviction: the downstream goroutine's cached verdict for a
// source ends when the reply filter's set evicts that source, so a reply
// from a place the set has forgotten is dropped as it was without the
// cache.
func TestSentCacheEviction(t *testing.T) {
	for _, f := range []ReplyFilter{FilterAddressPort, FilterAddress} {
		t.Run(f.String(), func(t *testing.T) {
			s := newSentSet(f)
			var c sentCache
			a := netip.MustParseAddrPort("192.0.2.1:53")
			if c.allows(&s, a) {
				t.Fatal("allowed before the client sent there")
			}
			s.add(a)
			if !c.allows(&s, a) || !c.allows(&s, a) {
				t.Fatal("not allowed after the client sent there")
			}
			// Fill the set with other places until it forgets a.
			for i := 0; s.allows(a); i++ {
				if i > 100*maxSent {
					t.Fatal("the set never evicted the first entry")
				}
				s.add(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(i)))
			}
			if c.allows(&s, a) {
				t.Fatal("the cache still allows a source the set evicted")
			}
		})
	}
}
