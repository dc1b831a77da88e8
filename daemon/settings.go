// Package daemon runs ifsocks as a service: it turns a validated
// config.Config into a socks.Server with its listeners, reports on the
// host's state, reloads the configuration on SIGHUP without dropping flows,
// follows the egress interfaces, serves metrics, talks to systemd, and stops
// gracefully when its context ends.
//
// It does not parse flags or build the logger (main does) and does not speak
// SOCKS (package socks does).
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package daemon

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/policy"
	"github.com/ifsocks/ifsocks/socks"
	"github.com/ifsocks/ifsocks/source"
)

// Settings builds the server settings for cfg.
func Settings(cfg *config.Config) (*socks.Settings, error) {
	accounts := make([]auth.Account, 0, len(cfg.Users))
	users := make(map[string]socks.User, len(cfg.Users))
	for _, u := range cfg.Users {
		accounts = append(accounts, auth.Account{Name: u.Name, Hash: u.PasswordHash, Password: u.Password})
		users[u.Name] = userOf(u)
	}
	listeners := make(map[string]*socks.Listener, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		listeners[l.Address] = &socks.Listener{Name: l.Name, NoAuth: l.NoAuth, AllowClients: l.AllowClients, Egress: egress(l.Egress),
			Protocols: protocols(l.Protocols)}
	}
	store, err := auth.NewStore(accounts, auth.Options{})
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	return &socks.Settings{
		Auth:             store,
		Users:            users,
		Listeners:        listeners,
		Policy:           policy.New(cfg.Server.Deny, cfg.Server.DenyOwnAddresses),
		Protocols:        protocols(cfg.Server.Protocols),
		HandshakeTimeout: cfg.Server.HandshakeTimeout,
		ConnectTimeout:   cfg.Server.ConnectTimeout,
		BindTimeout:      cfg.Server.BindTimeout,
		TCPKeepAlive:     cfg.Server.TCPKeepAlive,
		IdleTimeout:      cfg.Server.IdleTimeout,
		UDP: socks.UDPSettings{
			PortMin:         cfg.Server.UDPPortMin,
			PortMax:         cfg.Server.UDPPortMax,
			Advertise:       cfg.Server.UDPAdvertise,
			MaxAssociations: cfg.Server.MaxAssociations,
			MaxDatagram:     cfg.Server.UDPMaxDatagram,
			ReplyFilter:     cfg.Server.UDPReplyFilter,
			RequirePort:     cfg.Server.UDPRequirePort,
		},
		Limits: socks.Limits{
			MaxHandshakesPerIP: cfg.Server.MaxHandshakesPerIP,
			// Unset (MaxHandshakesFromNoFile), the daemon derives it
			// from the host (daemon.settings, host.go).
			MaxHandshakes: max(cfg.Server.MaxHandshakes, 0),
			AuthFail: socks.AuthFailLimit{
				Max:       cfg.Server.AuthFailLimit,
				MaxClient: cfg.Server.AuthFailLimitIP,
				Window:    cfg.Server.AuthFailWindow,
				Cooldown:  cfg.Server.AuthFailCooldown,
			},
			MaxConnections: cfg.Server.MaxConnections,
		},
	}, nil
}

// userOf converts a user's settings, from [[users]] or an auth backend's
// answer.
func userOf(u config.User) socks.User {
	return socks.User{Egress: egress(u.Egress), MaxAssociations: u.MaxAssociations,
		MaxConnections: u.MaxConnections, Rate: userRate(u)}
}

// egress converts a configured egress. A round-robin one gets its own
// position, so users do not disturb each other's turns.
func egress(e config.Egress) socks.Egress {
	out := socks.Egress{
		Interfaces:       e.Interfaces,
		Strategy:         e.Strategy,
		Ingress:          e.Interface == config.Ingress,
		Mark:             e.Mark,
		Rotation:         e.Rotation,
		SessionSeparator: e.SessionSeparator,
	}
	switch {
	case len(e.SourceIPs) > 0:
		out.Sources = source.New(e.SourceIPs)
	case e.SourceIP.IsValid():
		// One egress path: a source_ip is a pool of one address.
		out.Sources = source.New([]netip.Prefix{netip.PrefixFrom(e.SourceIP, e.SourceIP.BitLen())})
	}
	if out.Strategy == socks.RoundRobin {
		out.Turn = new(atomic.Uint64)
	}
	if e.Interface != "" && !out.Ingress {
		out.Interfaces = []string{e.Interface}
	}
	return out
}

// protocols converts a configured protocol set.
func protocols(p config.Protocols) socks.Protocols {
	var out socks.Protocols
	if p.SOCKS5 {
		out |= socks.ProtoSOCKS5
	}
	if p.HTTP {
		out |= socks.ProtoHTTP
	}
	if p.SOCKS4 {
		out |= socks.ProtoSOCKS4
	}
	return out
}

// userRate is u's rate limit; config has checked and defaulted it.
func userRate(u config.User) socks.Rate {
	if u.RateLimit <= 0 {
		return socks.Rate{}
	}
	return socks.Rate{BytesPerSec: u.RateLimit, Burst: int(u.RateBurst)}
}
