package check

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/ifsocks/ifsocks/config"
)

type severity int

const (
	warning severity = iota
	failure
)

// finding is one line of the error or warning list.
type finding struct {
	sev severity
	// subject names what the finding is about, as the operator finds it
	// in the file or on the host: a key path, a user, an interface, a file.
	subject string
	text    string
}

// row is one user's line of the table, already formatted.
type row struct {
	user, iface, state, ipv4, ipv6, default4, default6 string
	notes                                              []string
}

// result is everything a check found, before it is written out.
type result struct {
	path     string
	rows     []row
	findings []finding
	// poolLines describe the source_ips pools (pools.go).
	poolLines []poolLine
}

func (r *result) add(sev severity, subject, format string, args ...any) {
	r.findings = append(r.findings, finding{sev: sev, subject: subject, text: fmt.Sprintf(format, args...)})
}

func (r *result) count(sev severity) int {
	n := 0
	for _, f := range r.findings {
		if f.sev == sev {
			n++
		}
	}
	return n
}

func inspect(cfg *config.Config, path string, h host) *result {
	r := &result{path: path}
	for i, a := range cfg.Server.Listen {
		r.listen(h, fmt.Sprintf("server.listen[%d]", i), a, "the daemon cannot listen there and will not start")
	}
	for i, l := range cfg.Listeners {
		r.listen(h, fmt.Sprintf("listeners[%d].address", i), l.Address, "the daemon cannot listen there and will not start")
	}
	if a := cfg.Metrics.Listen; a != "" {
		r.listen(h, "metrics.listen", a, "the metrics endpoint cannot listen there and the daemon will not start")
	}
	r.fileMode(h, cfg, path)
	r.users(h, cfg)
	r.resolver(h, cfg)
	if !cfg.HasUsers() && cfg.Server.AllowOpen {
		r.open(cfg)
	}
	if cfg.Server.IdleTimeout == 0 && cfg.Server.TCPKeepAlive == 0 {
		r.add(warning, "server.idle_timeout", `"0s" with tcp_keepalive off: a flow whose client or target vanished without a FIN or RST stays open, holding its descriptors, until the daemon stops; set tcp_keepalive (e.g. "60s") or an idle timeout`)
	}
	return r
}

// listen reports a listen address the host cannot bind. Wildcards always
// bind; the port is not tried (that would need a socket, and the daemon
// may be running on it right now).
func (r *result) listen(h host, key, hostport, consequence string) {
	hs, _, err := net.SplitHostPort(hostport)
	if err != nil || hs == "" {
		return // config has validated the syntax; "" is the wildcard
	}
	ip, err := netip.ParseAddr(hs)
	if err != nil || ip.Unmap().IsUnspecified() {
		return
	}
	ip = ip.Unmap()
	subject := fmt.Sprintf("%s %q", key, hostport)
	local, err := h.isLocal(ip)
	if err != nil {
		r.add(failure, subject, "cannot tell whether %s is an address of this host: %v", ip, err)
		return
	}
	if local {
		return
	}
	sysctl := "net.ipv4.ip_nonlocal_bind"
	if ip.Is6() {
		sysctl = "net.ipv6.ip_nonlocal_bind"
	}
	nonlocal, err := h.nonlocalBind(ip.Is6())
	if err == nil && nonlocal {
		r.add(warning, subject, "%s is not an address of this host; %s=1 lets the daemon listen there anyway, but nothing arrives until the address is added", ip, sysctl)
		return
	}
	r.add(failure, subject, "%s is not an address of this host: %s (bind: cannot assign requested address); use an address from `ip addr`, or 0.0.0.0 / [::]", ip, consequence)
}

// fileMode warns about a config file others can read while it holds
// secrets, or that group or others can write (whoever writes it chooses
// the users, their passwords and where the daemon listens).
func (r *result) fileMode(h host, cfg *config.Config, path string) {
	mode, err := h.fileMode(path)
	if err != nil {
		r.add(warning, path, "cannot read the file mode: %v", err)
		return
	}
	perm := mode.Perm()
	if perm&0o004 != 0 && len(cfg.Users) > 0 {
		r.add(warning, path, "mode %04o: readable by others, and it holds passwords or password hashes; chmod o-r (0640 with the daemon's group, or 0600)", perm)
	}
	if perm&0o022 != 0 {
		r.add(warning, path, "mode %04o: writable by group or others, who could add users or change where the daemon listens; chmod go-w", perm)
	}
}

// resolver warns about nameservers on loopback. Users with an interface
// resolve names with DNS queries from sockets bound to that interface; a
// query to a loopback address cannot be delivered from there (IPv4: it is
// sent out of the interface and never answered; IPv6: "network
// unreachable"). Users without an interface are not affected.
func (r *result) resolver(h host, cfg *config.Config) {
	var bound []string
	for _, u := range cfg.Users {
		if u.Interface != "" {
			bound = append(bound, display(u.Name))
		}
	}
	if len(bound) == 0 {
		return
	}
	who := few(bound)
	const subject = "/etc/resolv.conf"
	servers, err := h.nameservers()
	switch {
	case err != nil:
		r.add(warning, subject, "cannot read the nameservers: %v", err)
		return
	case len(servers) == 0:
		r.add(warning, subject, "no nameserver listed: Go's resolver then asks 127.0.0.1 and ::1, which the DNS queries of users with an interface (%s) cannot reach from it, so their name lookups fail; list nameservers reachable through their interfaces", who)
		return
	}
	var loop []string
	for _, s := range servers {
		if s.Unmap().IsLoopback() {
			loop = append(loop, s.String())
		}
	}
	if len(loop) == 0 {
		return
	}
	stub := ""
	if slices.Contains(loop, "127.0.0.53") {
		stub = " (127.0.0.53 is the systemd-resolved stub: /run/systemd/resolve/resolv.conf lists the real nameservers)"
	}
	effect := "so their name lookups time out and their flows get reply 0x04 (after connect_timeout at most)"
	if len(loop) < len(servers) {
		effect = "so their lookups wait for the resolver timeout on it before trying the next nameserver"
	}
	r.add(warning, subject, "nameserver %s on loopback%s: the DNS queries of users with an interface (%s) are sent from sockets bound to that interface and cannot reach it, %s; list nameservers reachable through their interfaces",
		strings.Join(loop, ", "), stub, who, effect)
}

func (r *result) open(cfg *config.Config) {
	var public []string
	for _, a := range cfg.Server.Listen {
		hs, _, err := net.SplitHostPort(a)
		if ip, perr := netip.ParseAddr(hs); err != nil || perr != nil || !ip.Unmap().IsLoopback() {
			public = append(public, a)
		}
	}
	who := "every local user and process"
	if len(public) > 0 {
		who = "anyone who can reach " + strings.Join(public, ", ")
	}
	r.add(warning, "server.allow_open", "true and no [[users]]: %s can use this proxy without authentication; add [[users]] unless that is intended", who)
}

// parseResolvConf returns the nameservers as Go's resolver reads them
// (net/dnsconfig_unix.go): "nameserver IP" lines, at most three, comments
// starting with # or ;.
func parseResolvConf(b []byte) []netip.Addr {
	var servers []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if len(line) > 0 && (line[0] == '#' || line[0] == ';') {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" || len(servers) == 3 {
			continue
		}
		if ip, err := netip.ParseAddr(f[1]); err == nil {
			servers = append(servers, ip)
		}
	}
	return servers
}

// few joins names for a message, at most five of them: an interface may
// carry hundreds of users.
func few(names []string) string {
	const n = 5
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

// display returns a user or interface name as it can be printed in a
// table cell: quoted if it is empty or holds spaces or control characters.
func display(s string) string {
	if s == "" {
		return `""`
	}
	for _, c := range s {
		if c <= ' ' || c == '"' || !strconv.IsPrint(c) {
			return strconv.Quote(s)
		}
	}
	return s
}
