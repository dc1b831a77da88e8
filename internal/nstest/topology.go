package nstest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// TopologyConfig shapes a Topology.
type TopologyConfig struct {
	// Prefix starts the namespace names (PREFIX-PID-N-c, -p, -u).
	Prefix string
	// Net is the second octet of the IPv4 network 10.NET.0.0/16.
	Net int
	// V6, when set, is the first group of the IPv6 network (e.g. "fd31"
	// gives fd31::/16); unset, IPv6 is off in every namespace.
	V6 string
	// WANs is the number of proxy NICs to the upstream (default 2).
	WANs int
	// ClientOnWANs gives C a NIC on each wan's link too (cI, 10.NET.I.50),
	// joined to P's wanI by a bridge brI in U that holds U's address on
	// that link: C can then reach P's wan addresses (ingress tests), and
	// U still sees by which link a connection came.
	ClientOnWANs bool
}

// Topology is three namespaces:
//
//	C (client) c0 ─── cl0 P (proxy) wanI ─── upI U (upstream), I = 1..WANs
//
// C's c0 is 10.NET.0.2 and P's cl0 10.NET.0.1 (fdXX::2, ::1). P's wanI is
// 10.NET.I.1 and U's upI 10.NET.I.2 (fdXX:I::1, ::2). U holds the service
// addresses 10.NET.9.9 (fdXX:9::9) on its loopback, reachable only by way
// of a wan. P has a default route by every wan, wan1 preferred (metric
// 100*I), so without SO_BINDTODEVICE every flow would leave by wan1; P
// does not forward, so only a proxy can bridge C and U; U filters reverse
// paths strictly, so a reply proves the NIC a packet came by, not only its
// source address. P's resolv.conf names U's service address.
type Topology struct {
	C, P, U *NS
	cfg     TopologyConfig
}

// NewTopology builds the topology and removes it (killing what still runs
// inside) when the test ends.
func NewTopology(tb testing.TB, cfg TopologyConfig) *Topology {
	tb.Helper()
	RequireRoot(tb)
	start := time.Now()
	t, err := BuildTopology(cfg)
	if err != nil {
		tb.Fatalf("topology: %v", err)
	}
	tb.Logf("topology %s* built in %v", t.C.Name[:len(t.C.Name)-1], time.Since(start).Round(time.Millisecond))
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("topology teardown: %v", err)
		}
	})
	return t
}

// BuildTopology is NewTopology for setup outside a test (TestMain); the
// caller calls Close.
func BuildTopology(cfg TopologyConfig) (*Topology, error) {
	if cfg.WANs == 0 {
		cfg.WANs = 2
	}
	base := NewName(cfg.Prefix, "")
	t := &Topology{cfg: cfg}
	err := t.build(base)
	if err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

// Close deletes the namespaces that were made.
func (t *Topology) Close() error {
	var errs []error
	for _, ns := range []*NS{t.C, t.P, t.U} {
		if ns != nil {
			errs = append(errs, ns.Delete())
		}
	}
	t.C, t.P, t.U = nil, nil, nil
	return errors.Join(errs...)
}

func (t *Topology) build(base string) error {
	for _, r := range []struct {
		ns   **NS
		role string
	}{{&t.C, "c"}, {&t.P, "p"}, {&t.U, "u"}} {
		ns, err := Create(base + "-" + r.role)
		if err != nil {
			return err
		}
		*r.ns = ns
		if _, err := ns.IPErr("link", "set", "lo", "up"); err != nil {
			return err
		}
		settings := []string{"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"}
		if t.cfg.V6 == "" {
			settings = []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}
		}
		if err := ns.Sysctl(settings...); err != nil {
			return err
		}
	}
	// Set before the links exist, so that every new link inherits it:
	// no forwarding anywhere (only a proxy bridges C and U), strict
	// reverse-path filtering in U only (replies to a marked flow may
	// arrive in P by a NIC its main table does not route back by).
	for ns, rp := range map[*NS]string{t.C: "0", t.P: "0", t.U: "1"} {
		if err := ns.Sysctl("net.ipv4.ip_forward=0", "net.ipv4.conf.all.rp_filter="+rp, "net.ipv4.conf.default.rp_filter="+rp); err != nil {
			return err
		}
	}
	if t.cfg.V6 != "" {
		if err := t.P.Sysctl("net.ipv6.conf.all.forwarding=0"); err != nil {
			return err
		}
	}
	if err := t.link(t.C, "c0", t.P, "cl0", 0); err != nil {
		return err
	}
	for i := 1; i <= t.cfg.WANs; i++ {
		link := t.link
		if t.cfg.ClientOnWANs {
			link = t.bridged
		}
		if err := link(t.P, t.WAN(i), t.U, t.Up(i), i); err != nil {
			return err
		}
		if _, err := t.P.IPErr("route", "add", "default", "via", t.GatewayV4(i), "dev", t.WAN(i), "metric", strconv.Itoa(100*i)); err != nil {
			return err
		}
		if t.cfg.V6 != "" {
			if _, err := t.P.IPErr("-6", "route", "add", "default", "via", t.GatewayV6(i), "dev", t.WAN(i), "metric", strconv.Itoa(100*i)); err != nil {
				return err
			}
		}
	}
	svc := []string{t.ServiceV4() + "/32"}
	if t.cfg.V6 != "" {
		svc = append(svc, t.ServiceV6()+"/128")
	}
	if err := t.U.AddAddr("lo", svc...); err != nil {
		return err
	}
	return t.P.WriteResolvConf("nameserver " + t.ServiceV4() + "\n")
}

// link joins a and b by a veth on subnet i: a holds .1, b .2 (the client
// side is the other way round: C is .2, P .1).
func (t *Topology) link(a *NS, aDev string, b *NS, bDev string, i int) error {
	if err := VethErr(a, aDev, b, bDev); err != nil {
		return err
	}
	aHost, bHost := 1, 2
	if i == 0 {
		aHost, bHost = 2, 1
	}
	aAddrs := []string{fmt.Sprintf("%s/24", t.v4(i, aHost))}
	bAddrs := []string{fmt.Sprintf("%s/24", t.v4(i, bHost))}
	if t.cfg.V6 != "" {
		aAddrs = append(aAddrs, t.v6(i, aHost)+"/64")
		bAddrs = append(bAddrs, t.v6(i, bHost)+"/64")
	}
	if err := a.AddAddr(aDev, aAddrs...); err != nil {
		return err
	}
	return b.AddAddr(bDev, bAddrs...)
}

// bridged is link for ClientOnWANs: P's wanI and C's cI both reach U's
// bridge brI, which holds U's address.
func (t *Topology) bridged(p *NS, wan string, u *NS, up string, i int) error {
	br, cDev, ucDev := t.Bridge(i), "c"+strconv.Itoa(i), "uc"+strconv.Itoa(i)
	if err := VethErr(p, wan, u, up); err != nil {
		return err
	}
	if err := VethErr(t.C, cDev, u, ucDev); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "add", br, "type", "bridge"},
		{"link", "set", up, "master", br},
		{"link", "set", ucDev, "master", br},
		{"link", "set", br, "up"},
	} {
		if _, err := u.IPErr(args...); err != nil {
			return err
		}
	}
	if err := p.AddAddr(wan, t.v4(i, 1)+"/24"); err != nil {
		return err
	}
	if err := u.AddAddr(br, t.v4(i, 2)+"/24"); err != nil {
		return err
	}
	return t.C.AddAddr(cDev, t.ClientWANV4(i)+"/24")
}

// Bridge is U's bridge on wan i's link (ClientOnWANs).
func (t *Topology) Bridge(i int) string { return "br" + strconv.Itoa(i) }

// ClientWANV4 is C's address on wan i's link (ClientOnWANs).
func (t *Topology) ClientWANV4(i int) string { return t.v4(i, 50) }

func (t *Topology) v4(subnet, host int) string {
	return fmt.Sprintf("10.%d.%d.%d", t.cfg.Net, subnet, host)
}

func (t *Topology) v6(subnet, host int) string {
	if subnet == 0 {
		return fmt.Sprintf("%s::%d", t.cfg.V6, host)
	}
	return fmt.Sprintf("%s:%d::%d", t.cfg.V6, subnet, host)
}

// WAN is the name of P's i-th upstream NIC (from 1); Up is its peer in U.
func (t *Topology) WAN(i int) string { return "wan" + strconv.Itoa(i) }
func (t *Topology) Up(i int) string  { return "up" + strconv.Itoa(i) }

// ClientV4 is C's address; ProxyV4 P's address facing C.
func (t *Topology) ClientV4() string { return t.v4(0, 2) }
func (t *Topology) ProxyV4() string  { return t.v4(0, 1) }
func (t *Topology) ClientV6() string { return t.v6(0, 2) }
func (t *Topology) ProxyV6() string  { return t.v6(0, 1) }

// WANV4 is P's address on wan i; GatewayV4 U's address on that link.
func (t *Topology) WANV4(i int) string     { return t.v4(i, 1) }
func (t *Topology) GatewayV4(i int) string { return t.v4(i, 2) }
func (t *Topology) WANV6(i int) string     { return t.v6(i, 1) }
func (t *Topology) GatewayV6(i int) string { return t.v6(i, 2) }

// ServiceV4 and ServiceV6 are U's service addresses.
func (t *Topology) ServiceV4() string { return t.v4(9, 9) }
func (t *Topology) ServiceV6() string { return fmt.Sprintf("%s:9::9", t.cfg.V6) }

// ProxyAddr is P's address facing C with a port: where a daemon listens.
func (t *Topology) ProxyAddr(port int) string {
	return net.JoinHostPort(t.ProxyV4(), strconv.Itoa(port))
}

// ServiceAddr is U's IPv4 service address with a port.
func (t *Topology) ServiceAddr(port int) string {
	return net.JoinHostPort(t.ServiceV4(), strconv.Itoa(port))
}
