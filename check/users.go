package check

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/config"
)

// mainTable is RT_TABLE_MAIN, the table `ip route` shows.
const mainTable = 254

// ifaceState is one configured interface, the users mapped to it and
// what the host says about it. Users sharing an interface share its
// findings, so each is reported once, naming all of them.
type ifaceState struct {
	name  string
	users []string // "users[1] bob", for the finding's subject
	names []string // "bob", for "the flows of bob"
	link  *link    // nil when missing or unreadable
	state string   // table cell: up, down, missing, ?
	notes []string // short notes for the table rows of its users
}

func (st *ifaceState) subject() string {
	return fmt.Sprintf("interface %s (%s)", display(st.name), few(st.users))
}

// flowsOf names the flows of the interface's users: "the flows of bob",
// "the IPv4 flows of bob, carol".
func (st *ifaceState) flowsOf(family ...string) string {
	return strings.Join(append([]string{"the"}, append(family, "flows of "+few(st.names))...), " ")
}

// egressOwner is a user or listener with its egress, as the table and
// findings name it.
type egressOwner struct {
	key    string // "users[1]", "listeners[0]": the key path of the entry
	label  string // "users[1] bob", "listeners[0] 10.0.0.5:1081"
	name   string // "bob", "listener 10.0.0.5:1081"
	user   *config.User
	egress config.Egress
}

func owners(cfg *config.Config) []egressOwner {
	var out []egressOwner
	for i := range cfg.Users {
		u := &cfg.Users[i]
		out = append(out, egressOwner{
			key:   fmt.Sprintf("users[%d]", i),
			label: fmt.Sprintf("users[%d] %s", i, display(u.Name)), name: display(u.Name),
			user: u, egress: u.Egress,
		})
	}
	for i, l := range cfg.Listeners {
		if !l.NoAuth && l.Egress.IsZero() {
			continue // its users' egress applies
		}
		out = append(out, egressOwner{
			key:   fmt.Sprintf("listeners[%d]", i),
			label: fmt.Sprintf("listeners[%d] %s", i, l.Address), name: "listener " + l.Address,
			egress: l.Egress,
		})
	}
	return out
}

func (r *result) users(h host, cfg *config.Config) {
	ifaces := map[string]*ifaceState{}
	var order []*ifaceState
	use := func(o egressOwner, name string) {
		st := ifaces[name]
		if st == nil {
			st = &ifaceState{name: name}
			ifaces[name] = st
			order = append(order, st)
		}
		st.users = append(st.users, o.label)
		st.names = append(st.names, o.name)
	}
	all := owners(cfg)
	sources := make([]string, len(all)) // interface holding source_ip
	for i, o := range all {
		if o.user != nil && o.user.Password != "" {
			r.add(warning, o.label, "plaintext password in the file: replace it with password_hash (make one with: ifsocks hash-password)")
		}
		for _, n := range o.egress.Names() {
			use(o, n)
		}
		if ip := o.egress.SourceIP; ip.IsValid() {
			name, err := h.owner(ip)
			switch {
			case err != nil:
				r.add(failure, o.label, "cannot tell which interface holds source_ip %s: %v", ip, err)
			case name == "":
				r.add(failure, o.label, "source_ip %s is not an address of this host (see: ip -br addr): its flows get reply 0x03 until it is added", ip)
			default:
				sources[i] = name
				use(o, name)
			}
		}
		if len(o.egress.SourceIPs) > 0 {
			if nic := r.pool(h, o, o.key+".source_ips"); nic != "" && o.egress.Interface == "" {
				sources[i] = nic
				use(o, nic)
			}
		}
		if m := o.egress.Mark; m != 0 {
			r.add(warning, o.label, "mark = %d sets SO_MARK, which needs CAP_NET_ADMIN: the shipped systemd unit grants only CAP_NET_RAW and CAP_NET_BIND_SERVICE, so add CAP_NET_ADMIN to its AmbientCapabilities and CapabilityBoundingSet, or flows fail with reply 0x03; and route the mark with: ip rule add fwmark %d lookup TABLE", m, m)
		}
	}
	r.bcryptCosts(cfg)
	for _, st := range order {
		r.inspectIface(h, st)
	}
	for i, o := range all {
		r.rows = append(r.rows, makeRows(o, sources[i], ifaces)...)
	}
}

func (r *result) inspectIface(h host, st *ifaceState) {
	l, err := h.link(st.name)
	switch {
	case errors.Is(err, errNoLink):
		st.state = "missing"
		st.notes = append(st.notes, "no such interface")
		r.add(failure, st.subject(), "no such interface: the daemon starts, but %s get reply 0x03 until it appears (see: ip -br link)", st.flowsOf())
		return
	case err != nil:
		st.state = "?"
		st.notes = append(st.notes, "cannot inspect")
		r.add(failure, st.subject(), "cannot inspect: %v", err)
		return
	}
	st.link = l
	st.state = "up"
	if !l.up || !l.running {
		st.state = "down"
		why, note := "administratively down (ip link set "+st.name+" up)", "admin down"
		if l.up {
			why, note = "no carrier (cable, peer or driver)", "no carrier"
		}
		st.notes = append(st.notes, note)
		r.add(warning, st.subject(), "down, %s: %s get reply 0x03 until it is up", why, st.flowsOf())
	}
	r.rpFilter(h, st)
	if st.state == "up" {
		// Flows on a down interface get 0x03 before any route
		// matters (and going down removes its IPv4 routes anyway).
		r.routes(st)
	}
}

// rpFilter warns about strict reverse-path filtering. The kernel uses the
// larger of conf/all and conf/<iface> (Documentation/networking/ip-sysctl).
func (r *result) rpFilter(h host, st *ifaceState) {
	all, own, err := h.rpFilter(st.name)
	if err != nil {
		st.notes = append(st.notes, "rp_filter unknown")
		r.add(warning, st.subject(), "cannot read rp_filter: %v", err)
		return
	}
	if max(all, own) != 1 {
		return
	}
	// sysctl(8) writes a dot in an interface name (eth0.100) as "/".
	key := "net.ipv4.conf." + strings.ReplaceAll(st.name, ".", "/") + ".rp_filter"
	st.notes = append(st.notes, "rp_filter=1 (strict)")
	r.add(warning, st.subject(),
		"strict reverse-path filtering, rp_filter=1 (the larger of net.ipv4.conf.all.rp_filter=%d and %s=%d): "+
			"with SO_BINDTODEVICE on a host with several NICs, a reply arriving on %s is dropped when the main table's route back to its sender goes via another NIC, so %s time out; "+
			"use loose mode: sysctl -w %s=2 (and persist it in /etc/sysctl.d/)",
		all, key, own, st.name, st.flowsOf(), key)
}

// routes warns when no default route leaves by the interface. With
// SO_BINDTODEVICE the kernel only considers routes out of that device, so
// the default route of another NIC does not help. IPv4 then falls back to
// treating the destination as on-link (ip_route_output_key_hash_rcu) and
// waits for ARP, which fails after about 3 s with EHOSTUNREACH (reply
// 0x04); IPv6 fails at once with ENETUNREACH (reply 0x03).
func (r *result) routes(st *ifaceState) {
	l := st.link
	var has4, has6 bool
	for _, a := range l.addrs {
		if a.prefix.Addr().Is4() {
			has4 = true
		} else if !a.prefix.Addr().IsLinkLocalUnicast() {
			has6 = true
		}
	}
	const onLink = "(with no route out of the bound interface the kernel takes the target for on-link and asks ARP for it)"
	fix := fmt.Sprintf("add a default route via %s (any metric: only routes out of the bound interface are considered)", st.name)
	no4, no6 := len(l.default4) == 0, len(l.default6) == 0
	switch {
	case no4 && no6:
		st.notes = append(st.notes, "no default route")
		r.add(warning, st.subject(), "no default route out of it, IPv4 or IPv6, in any routing table: unless a more specific route via %s covers the target, %s fail, IPv4 after ~3 s with reply 0x04 %s, IPv6 at once with reply 0x03; %s",
			st.name, st.flowsOf(), onLink, fix)
	case no4 && has4:
		st.notes = append(st.notes, "no IPv4 default route")
		r.add(warning, st.subject(), "no IPv4 default route out of it in any routing table: unless a more specific route via %s covers the target, %s fail after ~3 s with reply 0x04 %s; %s",
			st.name, st.flowsOf("IPv4"), onLink, fix)
	case no6 && has6:
		st.notes = append(st.notes, "no IPv6 default route")
		r.add(warning, st.subject(), "no IPv6 default route out of it in any routing table, though it has a global IPv6 address: unless a more specific route via %s covers the target, %s get reply 0x03 at once; %s",
			st.name, st.flowsOf("IPv6"), fix)
	}
	for _, d := range []struct {
		family string
		tables []int
	}{{"IPv4", l.default4}, {"IPv6", l.default6}} {
		if len(d.tables) > 0 && !slices.Contains(d.tables, mainTable) {
			st.notes = append(st.notes, fmt.Sprintf("%s default only in %s (needs an ip rule)", d.family, tables(d.tables)))
		}
	}
}

// makeRows gives one row per interface o may leave by.
func makeRows(o egressOwner, source string, ifaces map[string]*ifaceState) []row {
	e := o.egress
	var rows []row
	switch {
	case e.Interface == config.Ingress:
		rows = append(rows, makeRow(o.name, nil, "ingress: the interface of the address each client connects to"))
	case source != "" && len(e.SourceIPs) > 0:
		rows = append(rows, makeRow(o.name, ifaces[source], "source pool"))
	case len(e.SourceIPs) > 0 && e.Interface == "":
		rows = append(rows, makeRow(o.name, nil, "source pool on no single interface"))
	case source != "":
		rows = append(rows, makeRow(o.name, ifaces[source], "source "+e.SourceIP.String()))
	case e.SourceIP.IsValid():
		rows = append(rows, makeRow(o.name, nil, "source "+e.SourceIP.String()+" not on this host"))
	case len(e.Names()) == 0:
		rows = append(rows, makeRow(o.name, nil, "kernel routing"))
	}
	names := e.Names()
	for i, n := range names {
		note := ""
		if len(names) > 1 {
			note = fmt.Sprintf("%s %d/%d", e.Strategy, i+1, len(names))
		}
		rows = append(rows, makeRow(o.name, ifaces[n], note))
	}
	for i := range rows {
		if e.Mark != 0 {
			rows[i].notes = append(rows[i].notes, fmt.Sprintf("mark %d", e.Mark))
		}
		if o.user != nil && o.user.Password != "" {
			rows[i].notes = append(rows[i].notes, "plaintext password")
		}
	}
	return rows
}

func makeRow(name string, st *ifaceState, note string) row {
	rw := row{user: name, iface: "-", state: "-", ipv4: "-", ipv6: "-", default4: "-", default6: "-"}
	if note != "" {
		rw.notes = []string{note}
	}
	if st != nil {
		rw.iface, rw.state = display(st.name), st.state
		rw.notes = append(rw.notes, st.notes...)
		if l := st.link; l != nil {
			rw.ipv4, rw.ipv6 = addrCells(l.addrs)
			rw.default4, rw.default6 = yesNo(len(l.default4) > 0), yesNo(len(l.default6) > 0)
		}
	}
	return rw
}

// addrCells formats the IPv4 and the IPv6 addresses of an interface.
// IPv6 link-local addresses are left out: every interface with IPv6 has
// one and flows never use them (the deny list refuses fe80::/10 targets).
func addrCells(addrs []addr) (v4, v6 string) {
	var a4, a6 []string
	for _, a := range addrs {
		s := a.prefix.String()
		if a.flag != "" {
			s += " (" + a.flag + ")"
		}
		switch {
		case a.prefix.Addr().Is4():
			a4 = append(a4, s)
		case !a.prefix.Addr().IsLinkLocalUnicast():
			a6 = append(a6, s)
		}
	}
	return cell(a4), cell(a6)
}

func cell(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// tables formats routing table numbers: "table 100", "tables 100, 200".
func tables(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	if len(s) == 1 {
		return "table " + s[0]
	}
	return "tables " + strings.Join(s, ", ")
}

// bcryptCosts warns about users whose password hashes have different bcrypt
// costs: the daemon makes every failed login cost as much as the highest
// (so that names cannot be told apart by timing), while a stolen file is
// only as hard to crack as each hash's own cost.
func (r *result) bcryptCosts(cfg *config.Config) {
	var hashes []string
	for _, u := range cfg.Users {
		if u.PasswordHash != "" {
			hashes = append(hashes, u.PasswordHash)
		}
	}
	if lo, hi := auth.Costs(hashes); lo != hi {
		r.add(warning, "users", "bcrypt costs differ (%d to %d): every failed login costs as much as cost %d, while the cheaper hashes are easier to crack from a stolen file; rehash them at one cost (ifsocks hash-password -cost %d)", lo, hi, hi, hi)
	}
}
