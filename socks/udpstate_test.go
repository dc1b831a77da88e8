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
			// Twice: the first fills the cache, the second is answered
			// from it.
			fromSet, fromCache := c.allows(&s, a), c.allows(&s, a)
			if !fromSet || !fromCache {
				t.Fatalf("not allowed after the client sent there (from the set: %v, from the cache: %v)", fromSet, fromCache)
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

// TestUDPReplyHeaderLen: the room the downstream asks for in front of a
// reply is exactly the header written there, so that header and payload
// are one piece of memory (one iovec) for every kind of source.
func TestUDPReplyHeaderLen(t *testing.T) {
	for _, s := range []string{"192.0.2.1:53", "[2001:db8::1]:443", "[::ffff:192.0.2.1]:53", "[fe80::1%1]:9"} {
		src := netip.MustParseAddrPort(s)
		if got, want := udpReplyHeaderLen(src), len(appendUDPReplyHeader(nil, src)); got != want {
			t.Errorf("%s: udpReplyHeaderLen %d, header written %d bytes", s, got, want)
		}
	}
}
