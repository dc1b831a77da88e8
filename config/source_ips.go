package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"
)

// Rotation says how a flow picks its address from source_ips. It is
// parsed here, once; package socks uses it as it is.
type Rotation int

const (
	// RotationFlow: a uniformly random address per connection and per
	// UDP association (the default).
	RotationFlow Rotation = iota
	// RotationUser: one address per user name, by a hash of the name.
	RotationUser
	// RotationSession: one address per session key, which the client
	// appends to its user name ("alice-session-k1"); a plain name gets
	// RotationFlow behaviour.
	RotationSession
)

var rotationNames = []string{
	RotationFlow:    "flow",
	RotationUser:    "user",
	RotationSession: "session",
}

func (r Rotation) String() string { return enumName(rotationNames, int(r)) }

// Defaults of the address pool keys.
const (
	DefaultSourceRotation   = RotationFlow
	DefaultSessionSeparator = "-session-"
	// MaxSourceIPs bounds the entries of one source_ips: the pool is
	// searched per flow and its size is counted in 64 bits.
	MaxSourceIPs = 4096
)

// sourceIPs validates source_ips, source_rotation and session_separator
// into e. The host is not consulted: which interface holds or routes the
// pool is reported by -check and decided per flow.
func (v *validator) sourceIPs(key func(string) string, fe fileEgress, e *Egress) {
	if fe.SourceIPs == nil {
		if fe.SourceRotation != "" {
			v.add(key("source_rotation"), fe.SourceRotation, "only applies with source_ips = [...]")
		}
		if fe.SessionSeparator != nil {
			v.add(key("session_separator"), *fe.SessionSeparator, "only applies with source_rotation = \"session\"")
		}
		return
	}
	switch {
	case len(fe.SourceIPs) == 0:
		v.add(key("source_ips"), "[]", "list at least one address or prefix (or remove the key)")
	case len(fe.SourceIPs) > MaxSourceIPs:
		v.add(key("source_ips"), fmt.Sprintf("%d entries", len(fe.SourceIPs)), fmt.Sprintf("at most %d entries (use prefixes)", MaxSourceIPs))
		return
	case fe.SourceIP != "":
		v.add(key("source_ips"), strings.Join(fe.SourceIPs, ","), "set either source_ip or source_ips")
	case fe.Interfaces != nil || fe.Interface == Ingress:
		v.add(key("source_ips"), strings.Join(fe.SourceIPs, ","), "a pool leaves by one interface: use interface = \"NAME\" (or none: the interface holding the addresses)")
	}
	pool := make([]netip.Prefix, 0, len(fe.SourceIPs))
	for i, s := range fe.SourceIPs {
		k := fmt.Sprintf("%s[%d]", key("source_ips"), i)
		p, err := parsePrefix(s)
		if err != nil {
			v.add(k, s, err.Error())
			continue
		}
		if a := p.Addr(); a.Is4In6() {
			v.add(k, s, "write IPv4 addresses as IPv4")
			continue
		}
		if a := p.Addr(); a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.IsLinkLocalUnicast() {
			v.add(k, s, "must be unicast addresses of this host (not loopback, link-local or multicast)")
			continue
		}
		if j := slices.IndexFunc(pool, p.Overlaps); j >= 0 {
			v.add(k, s, fmt.Sprintf("overlaps %s", pool[j]))
			continue
		}
		pool = append(pool, p)
	}
	// Sorted, so that the pool, and the address a user or session maps
	// to, does not depend on the order the entries are written in.
	slices.SortFunc(pool, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	e.SourceIPs = pool
	e.Rotation = DefaultSourceRotation
	if fe.SourceRotation != "" {
		r, ok := parseEnum(rotationNames, fe.SourceRotation)
		if !ok {
			v.add(key("source_rotation"), fe.SourceRotation, mustBe(rotationNames))
		}
		e.Rotation = Rotation(r)
	}
	if e.Rotation != RotationSession {
		if fe.SessionSeparator != nil {
			v.add(key("session_separator"), *fe.SessionSeparator, "only applies with source_rotation = \"session\"")
		}
		return
	}
	e.SessionSeparator = DefaultSessionSeparator
	if fe.SessionSeparator != nil {
		e.SessionSeparator = *fe.SessionSeparator
		if err := checkSeparator(*fe.SessionSeparator); err != nil {
			v.add(key("session_separator"), *fe.SessionSeparator, err.Error())
		}
	}
}

// checkSeparator: the separator is part of an RFC 1929 user name, so it
// must be short, printable and non-empty.
func checkSeparator(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty")
	case len(s) > 32:
		return fmt.Errorf("at most 32 bytes")
	case !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return r < 0x21 || r == 0x7f }) >= 0:
		return fmt.Errorf("printable characters only, no spaces")
	}
	return nil
}
