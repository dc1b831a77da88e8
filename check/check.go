// Package check explains a configuration against the host it runs on, for
// `ifsocks -check`: per user, the state, addresses and default routes of
// its egress interface, then the errors and warnings an operator should act
// on before (re)starting the daemon.
//
// It only reads the host (netlink dumps, /proc/sys, /etc/resolv.conf, the
// mode of the config file): it opens no listening or outbound socket, sends
// nothing and changes nothing. It describes one moment; it is not a monitor.
// Rules that need no host (key names, value syntax) belong to config, which
// has already accepted the configuration by the time Report runs.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package check

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"

	"github.com/ifsocks/ifsocks/config"
)

// errNoLink is wrapped by host.link when no interface has the name.
var errNoLink = errors.New("no such interface")

// host is the part of the machine a check reads. systemHost reads the
// kernel; tests use a fake.
type host interface {
	// link describes the named interface, or returns an error wrapping
	// errNoLink when there is none.
	link(name string) (*link, error)
	// rpFilter returns net.ipv4.conf.all.rp_filter and
	// net.ipv4.conf.<name>.rp_filter.
	rpFilter(name string) (all, iface int, err error)
	// isLocal reports whether a socket can be bound to ip without
	// ip_nonlocal_bind: the kernel has a local route for it.
	isLocal(ip netip.Addr) (bool, error)
	// owner returns the name of the interface holding the address ip,
	// or "" when none does.
	owner(ip netip.Addr) (string, error)
	// nonlocalBind reports net.ipv4.ip_nonlocal_bind (or its ipv6 twin).
	nonlocalBind(ipv6 bool) (bool, error)
	// nameservers returns the nameservers of /etc/resolv.conf that Go's
	// resolver uses (at most three); nil if the file names none or does
	// not exist.
	nameservers() ([]netip.Addr, error)
	// fileMode returns the permission bits of the file at path.
	fileMode(path string) (fs.FileMode, error)
}

// link is what the check needs to know about one interface.
type link struct {
	name    string
	up      bool // IFF_UP: administratively up
	running bool // IFF_RUNNING: carrier present, operationally up
	addrs   []addr
	// default4 and default6 list the routing tables holding a unicast
	// default route out of this interface (as its device or as one of
	// its nexthops).
	default4, default6 []int
}

// addr is one address of an interface.
type addr struct {
	prefix netip.Prefix
	// flag is "tentative", "dadfailed" or "deprecated" when the kernel
	// marks the address so (IPv6), else empty.
	flag string
}

// Report checks cfg, loaded from path, against this host. It writes a
// table of the users and their interfaces and a list of errors and
// warnings to w, and returns the number of errors: the caller exits
// non-zero when it is not 0. Warnings do not count.
func Report(w io.Writer, cfg *config.Config, path string) (errors int) {
	h, err := systemHost()
	if err != nil {
		fmt.Fprintf(w, "cannot check %s: %v\n", path, err)
		return 1
	}
	return report(w, cfg, path, h)
}

func report(w io.Writer, cfg *config.Config, path string, h host) int {
	r := inspect(cfg, path, h)
	r.write(w)
	return r.count(failure)
}
