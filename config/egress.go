package config

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// egress validates the egress keys of a [[users]] or [[listeners]] entry.
func (v *validator) egress(key func(string) string, fe fileEgress) Egress {
	e := Egress{Interface: fe.Interface}
	if fe.Interface != "" && fe.Interface != Ingress {
		if err := checkInterfaceName(fe.Interface); err != nil {
			v.add(key("interface"), fe.Interface, err.Error())
		}
	}
	if fe.Interfaces != nil {
		v.interfaces(key, fe, &e)
	} else if fe.Strategy != "" {
		v.add(key("strategy"), fe.Strategy, "only applies with interfaces = [...]")
	}
	if fe.SourceIP != "" {
		ip, err := netip.ParseAddr(fe.SourceIP)
		switch {
		case err != nil || ip.Zone() != "":
			v.add(key("source_ip"), fe.SourceIP, "not an IP address")
		case ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback():
			v.add(key("source_ip"), fe.SourceIP, "must be a unicast address of an interface")
		case fe.Interface != "" || fe.Interfaces != nil:
			v.add(key("source_ip"), fe.SourceIP, "set either source_ip or interface/interfaces: the source address decides the interface")
		default:
			e.SourceIP = ip.Unmap()
		}
	}
	v.sourceIPs(key, fe, &e)
	switch m := fe.Mark; {
	case m < 0 || m > math.MaxUint32:
		v.add(key("mark"), strconv.FormatInt(m, 10), "must be 1-4294967295 (or unset)")
	default:
		e.Mark = uint32(m)
	}
	return e
}

func (v *validator) interfaces(key func(string) string, fe fileEgress, e *Egress) {
	if fe.Interface != "" {
		v.add(key("interfaces"), strings.Join(fe.Interfaces, ","), "set either interface or interfaces")
	}
	if len(fe.Interfaces) == 0 {
		v.add(key("interfaces"), "[]", "list at least one interface (or remove the key)")
	}
	seen := map[string]int{}
	for i, n := range fe.Interfaces {
		k := fmt.Sprintf("%s[%d]", key("interfaces"), i)
		if n == Ingress {
			v.add(k, n, "\"ingress\" is only valid as interface = \"ingress\"")
			continue
		}
		if err := checkInterfaceName(n); err != nil {
			v.add(k, n, err.Error())
			continue
		}
		if j, dup := seen[n]; dup {
			v.add(k, n, fmt.Sprintf("same as interfaces[%d]", j))
		}
		seen[n] = i
	}
	e.Interfaces = fe.Interfaces
	if fe.Strategy != "" {
		s, ok := parseEnum(strategyNames, fe.Strategy)
		if !ok {
			v.add(key("strategy"), fe.Strategy, mustBe(strategyNames))
		}
		e.Strategy = Strategy(s)
	}
}

// listenerName is what a listener's name may be: it goes into log lines
// and, for accounting, into labels, so it stays short and plain.
var listenerName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// listeners validates [[listeners]]: each address is new, its
// authentication is possible, and a listener without authentication on a
// reachable address names the clients it serves.
func (v *validator) listeners(c *Config, f *file) {
	taken := map[string]string{}
	for i, a := range c.Server.Listen {
		taken[a] = fmt.Sprintf("server.listen[%d]", i)
	}
	names := map[string]int{}
	for i, fl := range f.Listeners {
		key := func(k string) string { return fmt.Sprintf("listeners[%d].%s", i, k) }
		l := Listener{Egress: v.egress(key, fl.fileEgress)}
		if fl.Name != "" {
			if !listenerName.MatchString(fl.Name) {
				v.add(key("name"), fl.Name, "must be 1-64 letters, digits, '.', '_' or '-'")
			} else if j, dup := names[fl.Name]; dup {
				v.add(key("name"), fl.Name, fmt.Sprintf("same name as listeners[%d]", j))
			} else {
				names[fl.Name] = i
				l.Name = fl.Name
			}
		}
		canon, err := canonicalListen(fl.Address)
		switch {
		case fl.Address == "":
			v.add(key("address"), "", "an address (IP:port) is required")
		case err != nil:
			v.add(key("address"), fl.Address, err.Error())
		case taken[canon] != "":
			v.add(key("address"), fl.Address, "same address as "+taken[canon])
		default:
			taken[canon] = fmt.Sprintf("listeners[%d]", i)
			l.Address = canon
		}
		switch fl.Auth {
		case "", "password":
			if !c.HasUsers() {
				v.add(key("auth"), "password", "no [[users]] to authenticate; add users or set auth = \"none\"")
			}
		case "none":
			l.NoAuth = true
			if len(l.SourceIPs) > 0 && l.Rotation != RotationFlow {
				v.add(key("source_rotation"), l.Rotation.String(), "needs auth = \"password\": it picks the address by the user name")
			}
		default:
			v.add(key("auth"), fl.Auth, "must be password or none")
		}
		for j, s := range fl.AllowClients {
			p, err := parsePrefix(s)
			if err != nil {
				v.add(fmt.Sprintf("%s[%d]", key("allow_clients"), j), s, err.Error())
				continue
			}
			l.AllowClients = append(l.AllowClients, p)
		}
		l.Protocols = c.Server.Protocols
		if fl.Protocols != nil {
			l.Protocols = v.protocols(key("protocols"), fl.Protocols, !l.NoAuth)
		} else if l.Protocols.SOCKS4 && !l.NoAuth {
			v.add(key("protocols"), c.Server.Protocols.String(), "inherited from server.protocols: SOCKS4 carries no password; set protocols for this listener")
		}
		l.Quota = v.quota(key, fl.fileQuota, c.Accounting.Path != "")
		if l.Quota.Bytes > 0 && !l.NoAuth {
			v.add(key("quota"), fmt.Sprint(fl.Quota), "only with auth = \"none\": authenticated flows count against their user's quota")
		}
		if l.NoAuth && len(fl.AllowClients) == 0 && l.Address != "" && !isLoopback(l.Address) {
			v.add(key("allow_clients"), "[]", "required with auth = \"none\" on a non-loopback address: without it this is an open proxy")
		}
		c.Listeners = append(c.Listeners, l)
	}
	if a := c.Metrics.Listen; a != "" && taken[a] != "" && !strings.HasPrefix(taken[a], "server.") {
		v.add("metrics.listen", a, "same address as "+taken[a])
	}
}

// isLoopback reports whether a canonical listen address is a loopback
// address (":port" listens on every address, so it is not).
func isLoopback(canon string) bool {
	ap, err := netip.ParseAddrPort(canon)
	return err == nil && ap.Addr().IsLoopback()
}
