package check

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// kernel is the host as netlink and /proc/sys describe it, in the network
// namespace of the calling process.
type kernel struct {
	// routes holds every IPv4 and IPv6 route of every routing table,
	// dumped once: the check describes one moment.
	routes []netlink.Route
}

func systemHost() (host, error) {
	var routes []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := dump(func() ([]netlink.Route, error) {
			// RT_FILTER_TABLE with table 0 (RT_TABLE_UNSPEC) keeps the
			// routes of every table; without it only main is listed.
			return netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		routes = append(routes, rs...)
	}
	return &kernel{routes: routes}, nil
}

// dump retries a netlink dump the kernel interrupted because the table
// changed under it (NLM_F_DUMP_INTR): its result may be incomplete.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return v, err
	}
}

func (k *kernel) owner(ip netip.Addr) (string, error) {
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("interface of %s: %w", ip, err)
			}
			return l.Attrs().Name, nil
		}
	}
	return "", nil
}

func (k *kernel) link(name string) (*link, error) {
	nl, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("interface %q: %w", name, errNoLink)
		}
		return nil, fmt.Errorf("interface %q: %w", name, err)
	}
	attrs := nl.Attrs()
	l := &link{
		name:    attrs.Name,
		up:      attrs.RawFlags&unix.IFF_UP != 0,
		running: attrs.RawFlags&unix.IFF_RUNNING != 0,
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nl, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("addresses of %q: %w", name, err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			l.addrs = append(l.addrs, addr{prefix: p, flag: addrFlag(a.Flags)})
		}
	}
	for _, r := range k.routes {
		if !isDefault(r) || !outOf(r, attrs.Index) {
			continue
		}
		switch r.Family {
		case netlink.FAMILY_V4:
			l.default4 = appendUnique(l.default4, r.Table)
		case netlink.FAMILY_V6:
			l.default6 = appendUnique(l.default6, r.Table)
		}
	}
	return l, nil
}

func addrFlag(f int) string {
	switch {
	case f&unix.IFA_F_DADFAILED != 0:
		return "dadfailed"
	case f&unix.IFA_F_TENTATIVE != 0:
		return "tentative"
	case f&unix.IFA_F_DEPRECATED != 0:
		return "deprecated"
	}
	return ""
}

// isDefault reports a unicast route to 0.0.0.0/0 or ::/0. Blackhole,
// unreachable and prohibit defaults lead nowhere.
func isDefault(r netlink.Route) bool {
	if r.Type != unix.RTN_UNICAST {
		return false
	}
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// outOf reports whether the route leaves by the interface, as its device
// or one of its multipath nexthops. Routes that use nexthop objects (ip
// route ... nhid N) carry their device only while
// net.ipv4.nexthop_compat_mode is 1, its default.
func outOf(r netlink.Route, index int) bool {
	if r.LinkIndex == index {
		return true
	}
	for _, nh := range r.MultiPath {
		if nh.LinkIndex == index {
			return true
		}
	}
	return false
}

func appendUnique(s []int, v int) []int {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

// isLocal looks for a local route (type RTN_LOCAL, any table) covering ip.
// That is the kernel's own test when binding an IPv4 address
// (inet_addr_type), and it includes the whole of 127.0.0.0/8; for IPv6
// there is one such route per address of the host.
func (k *kernel) isLocal(ip netip.Addr) (bool, error) {
	for _, r := range k.routes {
		if r.Type != unix.RTN_LOCAL {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok && p.Contains(ip) {
			return true, nil
		}
	}
	return false, nil
}

func (k *kernel) nonlocalBind(ipv6 bool) (bool, error) {
	family := "ipv4"
	if ipv6 {
		family = "ipv6"
	}
	v, err := readSysctl("/proc/sys/net/" + family + "/ip_nonlocal_bind")
	return v != 0, err
}

func (k *kernel) rpFilter(name string) (all, iface int, err error) {
	if all, err = readSysctl("/proc/sys/net/ipv4/conf/all/rp_filter"); err != nil {
		return 0, 0, err
	}
	if strings.Contains(name, "/") {
		return 0, 0, fmt.Errorf("interface %q: not a valid name", name)
	}
	iface, err = readSysctl("/proc/sys/net/ipv4/conf/" + name + "/rp_filter")
	return all, iface, err
}

func readSysctl(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

func (k *kernel) nameservers() ([]netip.Addr, error) {
	b, err := os.ReadFile("/etc/resolv.conf")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseResolvConf(b), nil
}

func (k *kernel) fileMode(path string) (fs.FileMode, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Mode(), nil
}
