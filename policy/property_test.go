package policy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ifsocks/ifsocks/config"
)

// form is one way of writing an IPv4 address that reaches it.
type form struct {
	name string
	// exact: the form carries the address alone, so it must be judged
	// exactly as the address (allowed when it is allowed, too). The
	// short local-use NAT64 layouts are read several ways and may be
	// refused for an allowed address (see embedded).
	exact bool
	make  func(v4 [4]byte, salt byte) netip.Addr
}

func v6(b [16]byte) netip.Addr { return netip.AddrFrom16(b) }

// forms lists every representation the policy must judge as the IPv4
// address it carries: plain, IPv4-mapped, NAT64 with the well-known
// prefix, NAT64 with the local-use prefix in each RFC 6052 layout that
// fits in it, and 6to4. salt fills the bits a scheme leaves free (the
// operator's part of a /96, a 6to4 site's subnet and host).
var forms = []form{
	{"plain", true, func(b [4]byte, _ byte) netip.Addr { return netip.AddrFrom4(b) }},
	{"ipv4-mapped", true, func(b [4]byte, _ byte) netip.Addr {
		return v6([16]byte{10: 0xff, 11: 0xff, 12: b[0], 13: b[1], 14: b[2], 15: b[3]})
	}},
	{"nat64 64:ff9b::/96", true, func(b [4]byte, _ byte) netip.Addr {
		return v6([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]})
	}},
	{"nat64 local /96", false, func(b [4]byte, s byte) netip.Addr {
		return v6([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 6: s, 11: s, 12: b[0], 13: b[1], 14: b[2], 15: b[3]})
	}},
	{"nat64 local /64", false, func(b [4]byte, s byte) netip.Addr {
		return v6([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 6: s, 7: s, 9: b[0], 10: b[1], 11: b[2], 12: b[3]})
	}},
	{"nat64 local /56", false, func(b [4]byte, s byte) netip.Addr {
		return v6([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 6: s, 7: b[0], 9: b[1], 10: b[2], 11: b[3]})
	}},
	{"nat64 local /48", false, func(b [4]byte, _ byte) netip.Addr {
		return v6([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 6: b[0], 7: b[1], 9: b[2], 10: b[3]})
	}},
	{"6to4", true, func(b [4]byte, s byte) netip.Addr {
		return v6([16]byte{0: 0x20, 1: 0x02, 2: b[0], 3: b[1], 4: b[2], 5: b[3], 7: s, 15: s | 1})
	}},
}

// samples returns the first, last and two inner addresses of an IPv4
// prefix.
func samples(p netip.Prefix) [][4]byte {
	first := p.Masked().Addr().As4()
	last := first
	host := 32 - p.Bits()
	for i := range 4 {
		bits := max(0, min(8, host-8*(3-i)))
		last[i] |= byte(1<<bits - 1)
	}
	mid := first
	mid[3] ^= byte(0x5a) & last[3] &^ first[3]
	mid[1] ^= byte(0xa5) & last[1] &^ first[1]
	next := first
	next[3] |= 1 & (last[3] &^ first[3])
	return [][4]byte{first, last, mid, next}
}

// TestEveryRepresentationDenied is the property of the deny list: for
// every IPv4 entry of the default list and of a sample list, and for this
// host's own addresses, every representation of every sampled address is
// refused; and every exact representation of an allowed address passes.
func TestEveryRepresentationDenied(t *testing.T) {
	sample := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("198.51.100.0/25"),
	}
	own := "203.0.113.9"
	lists := []struct {
		name string
		deny []netip.Prefix
	}{
		{"default", config.DefaultDeny},
		{"sample", sample},
	}
	for _, l := range lists {
		t.Run(l.name, func(t *testing.T) {
			p, _ := newPolicy(t, l.deny, true, own)
			targets := [][4]byte{netip.MustParseAddr(own).As4()}
			for _, pfx := range l.deny {
				if pfx.Addr().Is4() {
					targets = append(targets, samples(pfx)...)
				}
			}
			checked := 0
			for _, v4 := range targets {
				for _, f := range forms {
					for _, salt := range []byte{0, 1, 0xff} {
						a := f.make(v4, salt)
						checked++
						if err := p.Check(a); !errors.Is(err, ErrDenied) {
							t.Errorf("%s of %s: Check(%s) = %v, want denied", f.name, netip.AddrFrom4(v4), a, err)
						}
					}
				}
			}
			// IPv6 entries have one form, with or without a zone.
			for _, pfx := range l.deny {
				if pfx.Addr().Is6() {
					for _, a := range []netip.Addr{pfx.Addr(), pfx.Addr().WithZone("eth0")} {
						checked++
						if err := p.Check(a); !errors.Is(err, ErrDenied) {
							t.Errorf("Check(%s) = %v, want denied (in %s)", a, err, pfx)
						}
					}
				}
			}
			t.Logf("%d representations refused", checked)
		})
	}

	t.Run("allowed stay allowed", func(t *testing.T) {
		p, _ := newPolicy(t, config.DefaultDeny, true, own)
		for _, s := range []string{"8.8.8.8", "192.0.2.1", "1.1.1.1", "203.0.113.77", "100.100.100.201", "168.63.129.17", "240.0.0.1"} {
			v4 := netip.MustParseAddr(s).As4()
			for _, f := range forms {
				if !f.exact {
					continue
				}
				a := f.make(v4, 7)
				if err := p.Check(a); err != nil {
					t.Errorf("%s of %s: Check(%s) = %v, want allowed", f.name, s, a, err)
				}
			}
		}
	})
}

func TestEmbeddedReason(t *testing.T) {
	p, _ := newPolicy(t, config.DefaultDeny, false)
	tests := []struct{ addr, reason string }{
		{"64:ff9b::7f00:1", "in 127.0.0.0/8 (IPv4 127.0.0.1 embedded by NAT64 64:ff9b::/96)"},
		{"64:ff9b:1::a9fe:a9fe", "in 169.254.0.0/16 (IPv4 169.254.169.254 embedded by NAT64 64:ff9b:1::/48)"},
		{"2002:a9fe:a9fe::1", "in 169.254.0.0/16 (IPv4 169.254.169.254 embedded by 6to4 2002::/16)"},
		{"2002:6464:64c8:1::1", "in 100.100.100.200/32 (IPv4 100.100.100.200 embedded by 6to4 2002::/16)"},
		{"64:ff9b::a83f:8110", "in 168.63.129.16/32 (IPv4 168.63.129.16 embedded by NAT64 64:ff9b::/96)"},
		{"::ffff:224.0.0.251", "in 224.0.0.0/4"},
		{"ff02::fb", "in ff00::/8"},
		{"64:ff9b::808:808", ""},
		{"2002:808:808::1", ""},
		{"2001:db8::7f00:1", ""},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		checkResult(t, a, p.Check(a), tt.reason)
	}
}

// FuzzPolicyRepresentations checks the property for any IPv4 address and
// any deny prefix around it: if the address is refused, so is each of its
// representations, and exact representations are judged exactly.
func FuzzPolicyRepresentations(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, uint8(8), byte(0))
	f.Add([]byte{169, 254, 169, 254}, uint8(16), byte(0xff))
	f.Add([]byte{10, 99, 0, 2}, uint8(32), byte(1))
	f.Add([]byte{8, 8, 8, 8}, uint8(0), byte(0))
	f.Fuzz(func(t *testing.T, raw []byte, bits uint8, salt byte) {
		if len(raw) != 4 {
			return
		}
		v4 := [4]byte(raw)
		// A deny list of one prefix from a nearby address, so roughly
		// half the inputs are denied; plus the default list.
		base := netip.AddrFrom4([4]byte{v4[0], v4[1] ^ salt, v4[2], v4[3]})
		pfx, err := base.Prefix(int(bits % 33))
		if err != nil {
			t.Fatal(err)
		}
		deny := append([]netip.Prefix{pfx}, config.DefaultDeny...)
		p, _ := newPolicy(t, deny, false)
		plain := p.Check(netip.AddrFrom4(v4)) != nil
		for _, fm := range forms {
			a := fm.make(v4, salt)
			got := p.Check(a) != nil
			if plain && !got {
				t.Fatalf("%s is denied but its %s form %s is allowed", netip.AddrFrom4(v4), fm.name, a)
			}
			if fm.exact && got != plain {
				t.Fatalf("%s denied=%v but its %s form %s denied=%v", netip.AddrFrom4(v4), plain, fm.name, a, got)
			}
		}
	})
}
