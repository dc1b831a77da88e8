package check

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/source"
)

// poolLine is one line of the "source pools" section: what the host says
// about one pool entry.
type poolLine struct {
	owner string // "users[0] flo"
	text  string
}

// pool reports on o's source_ips: for each entry, the NIC that holds it
// (assigned) or the interface it leaves by and whether a local route
// covers it; then the pool's size per family. It returns the interface
// the pool's flows leave by ("" when none can be told), for the table.
//
// Errors: an entry the host would not receive replies for (neither
// assigned nor inside a local route), an entry of no interface when the
// egress names none, a pool whose entries sit on several NICs without
// interface. Warnings: an IPv6 prefix shorter than /64, an address
// assigned to another NIC than the named interface.
func (r *result) pool(h host, o egressOwner, key string) string {
	e := o.egress
	named := e.Interface // config allows no other interface setting with source_ips
	var nics []string
	for _, p := range e.SourceIPs {
		first, last := poolEdges(p)
		holder, err := h.owner(first)
		if err != nil {
			r.add(failure, key, "cannot tell which interface holds %s: %v", first, err)
			continue
		}
		if holder != "" && !slices.Contains(nics, holder) {
			nics = append(nics, holder)
		}
		if p.Addr().Is6() && p.Bits() < 64 {
			r.add(warning, key, "%s is shorter than /64: sites and blocklists commonly treat a /64 as one host, so rotating inside a larger prefix buys little, and the neighbour cache of a router on-link could fill", p)
		}
		local, err := h.isLocal(first)
		if err == nil && local && first != last {
			local, err = h.isLocal(last)
		}
		if err != nil {
			r.add(failure, key, "cannot tell whether %s is local: %v", p, err)
			continue
		}
		switch {
		case named == "" && holder == "":
			r.add(failure, key, "%s is not an address of this host (see: ip -br addr): without interface = \"NAME\" a pool's addresses must be assigned to the NIC they leave by; for a prefix routed to the host, name its NIC with interface and add a local route (ip route add local %s dev lo)", p, p)
			r.poolLines = append(r.poolLines, poolLine{o.label, fmt.Sprintf("%s on no interface: not an address of this host", p)})
		case named != "" && !local:
			r.add(failure, key, "%s: no local route and not an address of this host: the kernel would not deliver the replies of flows from it, so they get reply 0x03; add one: ip %sroute add local %s dev lo", p, ipv6Flag(p), p)
			r.poolLines = append(r.poolLines, poolLine{o.label, fmt.Sprintf("%s on %s: no local route", p, named)})
		case named != "" && holder != "" && holder != named:
			r.add(warning, key, "%s is assigned to %s, but the flows leave by interface %s: replies come back by %s only if the network routes them there", p, holder, named, holder)
			r.poolLines = append(r.poolLines, poolLine{o.label, fmt.Sprintf("%s on %s: assigned to %s", p, named, holder)})
		case named != "" && holder == "":
			r.poolLines = append(r.poolLines, poolLine{o.label, fmt.Sprintf("%s on %s: local route (not assigned; bound with IP_FREEBIND)", p, named)})
		default:
			r.poolLines = append(r.poolLines, poolLine{o.label, fmt.Sprintf("%s on %s: assigned", p, holder)})
		}
	}
	nic := named
	if named == "" {
		switch len(nics) {
		case 0:
		case 1:
			nic = nics[0]
		default:
			r.add(failure, key, "the pool's addresses sit on several interfaces (%s): each flow would leave by the NIC of the address it picks, and a pool of both families may fail its flows; give the pool one NIC with interface = \"NAME\", or split it among users", strings.Join(nics, ", "))
		}
	}
	p := source.New(e.SourceIPs)
	where := nic
	if where == "" {
		where = "no single interface"
	}
	var sizes []string
	for _, is4 := range []bool{true, false} {
		if p.Has(is4) {
			sizes = append(sizes, count(p.Size(is4), family(is4)))
		}
	}
	text := fmt.Sprintf("%s on %s, rotation %s", strings.Join(sizes, " and "), where, e.Rotation)
	if e.Rotation == config.RotationSession {
		text += fmt.Sprintf(" (log in as USER%sKEY)", e.SessionSeparator)
	}
	r.poolLines = append(r.poolLines, poolLine{o.label, text})
	return nic
}

// poolEdges returns the first and last usable addresses of an entry (as
// source.Pool picks them: no IPv6 subnet-router anycast, no IPv4 network
// or broadcast address in prefixes of /30 and shorter).
func poolEdges(p netip.Prefix) (first, last netip.Addr) {
	first = p.Addr()
	host := first.BitLen() - p.Bits()
	if host == 0 {
		return first, first
	}
	b := first.As16()
	if first.Is4() {
		a4 := first.As4()
		copy(b[12:], a4[:])
	}
	// last = first | hostmask
	for i := 15; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	last = netip.AddrFrom16(b)
	if first.Is4() {
		last = last.Unmap()
	}
	if h := first.BitLen() - p.Bits(); first.Is6() && h >= 1 || first.Is4() && h >= 2 {
		first = first.Next()
		if first.Is4() {
			last = last.Prev()
		}
	}
	return first, last
}

func ipv6Flag(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "-6 "
	}
	return ""
}

func family(is4 bool) string {
	if is4 {
		return "IPv4"
	}
	return "IPv6"
}

// count formats a number of addresses of a family: exact up to a
// million, else as a power of two ("about 2^48 IPv6 addresses").
func count(n uint64, fam string) string {
	switch {
	case n == 1:
		return "1 " + fam + " address"
	case n <= 1_000_000:
		return fmt.Sprintf("%d %s addresses", n, fam)
	case n == ^uint64(0):
		return "2^64 or more " + fam + " addresses"
	}
	return fmt.Sprintf("about 2^%d %s addresses", bits.Len64(n), fam)
}
