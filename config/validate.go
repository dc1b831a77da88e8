package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"
)

// Error is one invalid setting: the key path, the offending value and why.
type Error struct {
	Key    string
	Value  string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %q: %s", e.Key, e.Value, e.Reason)
}

// validator collects every error of a file so the operator can fix them in
// one pass instead of one per restart.
type validator struct {
	errs []error
}

func (v *validator) add(key, value, reason string) {
	v.errs = append(v.errs, &Error{Key: key, Value: value, Reason: reason})
}

func (v *validator) server(c *Config, f *file) {
	s := &c.Server
	if len(s.Listen) == 0 && len(f.Listeners) == 0 {
		v.add("server.listen", "[]", "at least one address is required (here or in [[listeners]])")
	}
	seen := map[string]int{}
	listen := make([]string, 0, len(s.Listen))
	for i, a := range s.Listen {
		key := fmt.Sprintf("server.listen[%d]", i)
		canon, err := canonicalListen(a)
		if err != nil {
			v.add(key, a, err.Error())
			continue
		}
		if j, dup := seen[canon]; dup {
			v.add(key, a, fmt.Sprintf("same address as server.listen[%d]", j))
			continue
		}
		seen[canon] = i
		listen = append(listen, canon)
	}
	s.Listen = listen
	v.duration(f, "handshake_timeout", f.Server.HandshakeTimeout, &s.HandshakeTimeout, false)
	v.duration(f, "idle_timeout", f.Server.IdleTimeout, &s.IdleTimeout, true)
	v.duration(f, "connect_timeout", f.Server.ConnectTimeout, &s.ConnectTimeout, false)
	v.duration(f, "shutdown_timeout", f.Server.ShutdownTimeout, &s.ShutdownTimeout, true)
	v.duration(f, "bind_timeout", f.Server.BindTimeout, &s.BindTimeout, false)
	v.duration(f, "tcp_keepalive", f.Server.TCPKeepAlive, &s.TCPKeepAlive, true)
	if k := s.TCPKeepAlive; k%time.Second != 0 || k > MaxTCPKeepAlive {
		// The kernel counts keepalive in whole seconds, up to 32767.
		v.add("server.tcp_keepalive", f.Server.TCPKeepAlive, fmt.Sprintf("must be whole seconds, at most %v (the kernel's limit)", MaxTCPKeepAlive))
		s.TCPKeepAlive = 0
	}
	if f.defined("server", "deny") {
		s.Deny = make([]netip.Prefix, 0, len(f.Server.Deny))
		for i, d := range f.Server.Deny {
			p, err := parsePrefix(d)
			if err != nil {
				v.add(fmt.Sprintf("server.deny[%d]", i), d, err.Error())
				continue
			}
			s.Deny = append(s.Deny, unmapPrefix(p))
		}
	}
	v.udp(s, f)
	v.limits(s, f)
}

// maxUDPPayload is the largest UDP payload IPv4 can carry (65535 minus the
// IP and UDP headers).
const maxUDPPayload = 65507

func (v *validator) udp(s *Server, f *file) {
	if f.defined("server", "udp_ports") {
		lo, hi, err := parsePortRange(f.Server.UDPPorts)
		if err != nil {
			v.add("server.udp_ports", f.Server.UDPPorts, err.Error())
		}
		s.UDPPortMin, s.UDPPortMax = lo, hi
	}
	if f.defined("server", "udp_advertise") {
		ip, err := netip.ParseAddr(f.Server.UDPAdvertise)
		if err != nil || ip.Zone() != "" || ip.IsUnspecified() {
			v.add("server.udp_advertise", f.Server.UDPAdvertise, "must be an IP address")
		}
		s.UDPAdvertise = ip.Unmap()
	}
	if f.defined("server", "max_associations") {
		if n := f.Server.MaxAssociations; n < 1 {
			v.add("server.max_associations", strconv.Itoa(n), "must be at least 1")
		}
		s.MaxAssociations = f.Server.MaxAssociations
	}
	if f.defined("server", "udp_max_datagram") {
		if n := f.Server.UDPMaxDatagram; n < 1 || n > maxUDPPayload {
			v.add("server.udp_max_datagram", strconv.Itoa(n), fmt.Sprintf("must be 1-%d", maxUDPPayload))
		}
		s.UDPMaxDatagram = f.Server.UDPMaxDatagram
	}
	if f.defined("server", "udp_reply_filter") {
		rf, ok := parseEnum(replyFilterNames, f.Server.UDPReplyFilter)
		if !ok {
			v.add("server.udp_reply_filter", f.Server.UDPReplyFilter, mustBe(replyFilterNames))
		}
		s.UDPReplyFilter = ReplyFilter(rf)
	}
}

// parsePortRange accepts "40000-40999" or a single port.
func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		b = a
	}
	x, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	y, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	switch {
	case err1 != nil || err2 != nil:
		return 0, 0, fmt.Errorf("not a port range (use e.g. \"40000-40999\")")
	case x < 1 || y < x:
		return 0, 0, fmt.Errorf("want 1 <= first <= last <= 65535")
	}
	return uint16(x), uint16(y), nil
}

// canonicalListen accepts "IP:port" and ":port" (all addresses) and
// returns the address in one canonical spelling ("[fd31:0::1]:80" and
// "[fd31::1]:80" are the same socket), so that a reload can tell which
// listeners it keeps. Host names are refused: a daemon should not depend on
// DNS to decide where it listens.
func canonicalListen(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", fmt.Errorf("not host:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port must be 1-65535")
	}
	if host == "" {
		return ":" + strconv.Itoa(n), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return "", fmt.Errorf("host must be an IP address")
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(n)).String(), nil
}

// parsePrefix accepts a CIDR or a single address (taken as /32 or /128).
// A CIDR with host bits set is refused: it usually hides a typo.
// unmapPrefix turns an IPv4-mapped prefix (::ffff:10.0.0.0/104) into the
// IPv4 prefix it stands for (10.0.0.0/8). The policy judges a mapped
// destination as IPv4, so a mapped entry would otherwise never match.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("not a CIDR or IP address")
		}
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not a CIDR")
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	return p, nil
}

func (v *validator) metrics(c *Config) {
	if a := c.Metrics.Listen; a != "" {
		canon, err := canonicalListen(a)
		if err != nil {
			v.add("metrics.listen", a, err.Error())
			return
		}
		for i, l := range c.Server.Listen {
			if l == canon {
				v.add("metrics.listen", a, fmt.Sprintf("same address as server.listen[%d]", i))
			}
		}
		c.Metrics.Listen = canon
	}
}

func (v *validator) log(c *Config) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", c.Log.Level, "must be debug, info, warn or error")
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		v.add("log.format", c.Log.Format, "must be json or console")
	}
}

func (v *validator) users(c *Config, f *file) {
	seen := map[string]int{}
	for i, fu := range f.Users {
		key := func(k string) string { return fmt.Sprintf("users[%d].%s", i, k) }
		u := v.userSettings(key, fu, c)
		u.Name, u.PasswordHash, u.Password = fu.Name, fu.PasswordHash, fu.Password
		switch {
		case u.Name == "":
			v.add(key("name"), u.Name, "a name is required")
		case len(u.Name) > 255:
			v.add(key("name"), u.Name[:32]+"...", "longer than 255 bytes (RFC 1929 limit)")
		default:
			if j, dup := seen[u.Name]; dup {
				v.add(key("name"), u.Name, fmt.Sprintf("duplicate of users[%d]", j))
			}
			seen[u.Name] = i
		}
		v.password(key, u)
		c.Users = append(c.Users, u)
	}
}

// userSettings validates what a user entry says besides its name and
// password: egress, limits and quota (c's [accounting] must be in place).
// [[users]] entries and the answers of an auth backend (answer.go) both go
// through it, so a key added here is a key of both.
func (v *validator) userSettings(key func(string) string, fu fileUser, c *Config) User {
	u := User{MaxAssociations: fu.MaxAssociations, Egress: v.egress(key, fu.fileEgress)}
	v.userLimits(key, &u, fu, &c.Server)
	u.Quota = v.quota(key, fu.fileQuota, c.Accounting.Path != "")
	if u.MaxAssociations < 0 {
		v.add(key("max_associations"), strconv.Itoa(u.MaxAssociations), "must be at least 1 (or unset for the server default)")
	}
	return u
}

func (v *validator) password(key func(string) string, u User) {
	switch {
	case u.Password == "" && u.PasswordHash == "":
		v.add(key("password_hash"), "", "set password_hash (bcrypt) or password")
	case u.Password != "" && u.PasswordHash != "":
		v.add(key("password"), "***", "set only one of password and password_hash")
	case len(u.Password) > 255:
		v.add(key("password"), "***", "longer than 255 bytes (RFC 1929 limit)")
	case u.PasswordHash != "":
		if err := checkBcrypt(u.PasswordHash); err != nil {
			v.add(key("password_hash"), redactHash(u.PasswordHash), err.Error())
		}
	}
}

// checkBcrypt accepts the $2a$, $2b$ and $2y$ variants. They differ only
// in historical bugs of other implementations; the verification is the
// same. The whole hash is checked ("$2b$" cost "$" and 53 characters of
// bcrypt's base64), not just its prefix, so a mangled hash that could never
// match is reported at load time.
func checkBcrypt(h string) error {
	if !(strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")) {
		return fmt.Errorf("not a bcrypt hash ($2a$, $2b$ or $2y$; make one with: ifsocks hash-password)")
	}
	if len(h) != 60 || h[6] != '$' || strings.Trim(h[7:], bcryptAlphabet) != "" {
		return fmt.Errorf("not a valid bcrypt hash: want 60 characters, \"$2b$NN$\" and 53 of [./A-Za-z0-9]")
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return fmt.Errorf("not a valid bcrypt hash: %v", err)
	}
	return nil
}

const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// redactHash keeps the non-secret prefix (variant and cost) of a hash in
// error messages so the operator can see which value is meant.
func redactHash(s string) string {
	if len(s) <= 7 {
		return s
	}
	return s[:7] + "***"
}

// checkInterfaceName applies the kernel's rules for interface names
// (dev_valid_name in net/core/dev.c).
func checkInterfaceName(n string) error {
	if len(n) > 15 {
		return fmt.Errorf("interface names are at most 15 bytes")
	}
	if n == "." || n == ".." {
		return fmt.Errorf("not a valid interface name")
	}
	for _, r := range n {
		if r == '/' || r == ':' || unicode.IsSpace(r) || r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return fmt.Errorf("not a valid interface name")
		}
	}
	return nil
}

// openRelay refuses a configuration that would accept anyone from the
// network without authentication, unless the operator says so explicitly.
func (v *validator) openRelay(c *Config) {
	if c.HasUsers() || c.Server.AllowOpen {
		return
	}
	for i, a := range c.Server.Listen {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			continue // reported by server()
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			v.add(fmt.Sprintf("server.listen[%d]", i), a,
				"no [[users]] configured and the address is not loopback: this would be an open proxy; add users or set server.allow_open = true")
		}
	}
}
