package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
	if len(s.Listen) == 0 {
		v.add("server.listen", "[]", "at least one address is required")
	}
	seen := map[string]bool{}
	for i, a := range s.Listen {
		key := fmt.Sprintf("server.listen[%d]", i)
		if err := checkListen(a); err != nil {
			v.add(key, a, err.Error())
		} else if seen[a] {
			v.add(key, a, "listed twice")
		}
		seen[a] = true
	}
	v.duration(f, "handshake_timeout", f.Server.HandshakeTimeout, &s.HandshakeTimeout, false)
	v.duration(f, "idle_timeout", f.Server.IdleTimeout, &s.IdleTimeout, true)
	v.duration(f, "connect_timeout", f.Server.ConnectTimeout, &s.ConnectTimeout, false)
	v.duration(f, "shutdown_timeout", f.Server.ShutdownTimeout, &s.ShutdownTimeout, true)
	if f.defined("server", "deny") {
		s.Deny = make([]netip.Prefix, 0, len(f.Server.Deny))
		for i, d := range f.Server.Deny {
			p, err := parsePrefix(d)
			if err != nil {
				v.add(fmt.Sprintf("server.deny[%d]", i), d, err.Error())
				continue
			}
			s.Deny = append(s.Deny, p)
		}
	}
}

// checkListen accepts "IP:port" and ":port" (all addresses). Host names are
// refused: a daemon should not depend on DNS to decide where it listens.
func checkListen(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("not host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be 1-65535")
	}
	if host == "" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err != nil || ip.Zone() != "" {
		return fmt.Errorf("host must be an IP address")
	}
	return nil
}

// parsePrefix accepts a CIDR or a single address (taken as /32 or /128).
// A CIDR with host bits set is refused: it usually hides a typo.
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
		u := User(fu)
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
		if u.Interface != "" {
			if err := checkInterfaceName(u.Interface); err != nil {
				v.add(key("interface"), u.Interface, err.Error())
			}
		}
		c.Users = append(c.Users, u)
	}
}

func (v *validator) password(key func(string) string, u User) {
	switch {
	case u.Password == "" && u.PasswordHash == "":
		v.add(key("password_hash"), "", "set password_hash (bcrypt) or password")
	case u.Password != "" && u.PasswordHash != "":
		v.add(key("password"), redact(u.Password), "set only one of password and password_hash")
	case len(u.Password) > 255:
		v.add(key("password"), redact(u.Password), "longer than 255 bytes (RFC 1929 limit)")
	case u.PasswordHash != "":
		if err := checkBcrypt(u.PasswordHash); err != nil {
			v.add(key("password_hash"), redact(u.PasswordHash), err.Error())
		}
	}
}

// checkBcrypt accepts the $2a$, $2b$ and $2y$ variants. They differ only
// in historical bugs of other implementations; the verification is the same.
func checkBcrypt(h string) error {
	if len(h) < 4 || !(strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")) {
		return fmt.Errorf("not a bcrypt hash ($2a$, $2b$ or $2y$; make one with: ifsocks hash-password)")
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return fmt.Errorf("not a valid bcrypt hash: %v", err)
	}
	return nil
}

// redact keeps secrets out of error messages while still showing which
// value is meant.
func redact(s string) string {
	if len(s) <= 7 {
		return "***"
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
	if len(c.Users) > 0 || c.Server.AllowOpen {
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
