package config

import (
	"fmt"
	"strings"
)

// Protocol names as written in the protocols keys.
const (
	ProtocolSOCKS5 = "socks5"
	ProtocolHTTP   = "http"
	ProtocolSOCKS4 = "socks4"
)

// Protocols says which protocols a listen address serves; the server tells
// them apart by the first byte a client sends.
type Protocols struct {
	SOCKS5 bool
	HTTP   bool
	// SOCKS4 covers SOCKS4 and SOCKS4a. They carry no password, so they
	// are allowed only where no password is required.
	SOCKS4 bool
}

// DefaultProtocols is what an address serves when protocols is not set.
var DefaultProtocols = Protocols{SOCKS5: true, HTTP: true}

// String lists the protocols as the config writes them.
func (p Protocols) String() string {
	var s []string
	for _, x := range []struct {
		on   bool
		name string
	}{{p.SOCKS5, ProtocolSOCKS5}, {p.HTTP, ProtocolHTTP}, {p.SOCKS4, ProtocolSOCKS4}} {
		if x.on {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, ",")
}

// protocols validates a protocols key. passwordNeeded says whether the
// address authenticates its clients, which SOCKS4 cannot.
func (v *validator) protocols(key string, raw []string, passwordNeeded bool) Protocols {
	var p Protocols
	if len(raw) == 0 {
		v.add(key, "[]", "list at least one of socks5, http, socks4 (or remove the key)")
		return p
	}
	for i, name := range raw {
		k := fmt.Sprintf("%s[%d]", key, i)
		var on *bool
		switch name {
		case ProtocolSOCKS5:
			on = &p.SOCKS5
		case ProtocolHTTP:
			on = &p.HTTP
		case ProtocolSOCKS4:
			on = &p.SOCKS4
			if passwordNeeded {
				v.add(k, name, "SOCKS4 carries no password: allowed only where no password is required (a listener with auth = \"none\", or no [[users]])")
			}
		default:
			v.add(k, name, "must be socks5, http or socks4")
			continue
		}
		if *on {
			v.add(k, name, "listed twice")
		}
		*on = true
	}
	return p
}

// serverProtocols validates server.protocols; [server] listen requires a
// password whenever there are [[users]].
func (v *validator) serverProtocols(c *Config, f *file) {
	if f.defined("server", "protocols") {
		c.Server.Protocols = v.protocols("server.protocols", f.Server.Protocols, c.HasUsers() && len(c.Server.Listen) > 0)
	}
}
