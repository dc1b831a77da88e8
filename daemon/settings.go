// Package daemon runs ifsocks as a service: it turns a validated
// config.Config into a socks.Server with its listeners, reports on the
// host's state, reloads the configuration on SIGHUP without dropping flows,
// follows the egress interfaces, serves metrics, talks to systemd, and stops
// gracefully when its context ends.
//
// It does not parse flags or build the logger (main does) and does not speak
// SOCKS (package socks does).
package daemon

import (
	"fmt"
	"sync/atomic"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/policy"
	"github.com/ifsocks/ifsocks/socks"
	"go.uber.org/zap"
)

// Settings builds the server settings for cfg.
func Settings(cfg *config.Config) (*socks.Settings, error) {
	accounts := make([]auth.Account, 0, len(cfg.Users))
	users := make(map[string]socks.User, len(cfg.Users))
	for _, u := range cfg.Users {
		accounts = append(accounts, auth.Account{Name: u.Name, Hash: u.PasswordHash, Password: u.Password})
		users[u.Name] = socks.User{Egress: egress(u.Egress), MaxAssociations: u.MaxAssociations,
			MaxConnections: u.MaxConnections, Rate: userRate(u)}
	}
	listeners := make(map[string]*socks.Listener, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		listeners[l.Address] = &socks.Listener{Name: l.Name, NoAuth: l.NoAuth, AllowClients: l.AllowClients, Egress: egress(l.Egress)}
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
			ReplyFilter:     replyFilters[cfg.Server.UDPReplyFilter],
			RequirePort:     cfg.Server.UDPRequirePort,
		},
		Limits: socks.Limits{
			MaxHandshakesPerIP: cfg.Server.MaxHandshakesPerIP,
			MaxHandshakes:      handshakeCap(cfg.Server.MaxHandshakes),
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

// handshakeCap is max_handshakes as configured or, when unset, the share
// of the descriptor limit (RLIMIT_NOFILE, read now: at start and at each
// reload) that clients in their handshake may hold.
func handshakeCap(n int) int {
	if n != config.MaxHandshakesFromNoFile {
		return n
	}
	lim := noFileLimit() / config.NoFileShareForHandshakes
	return int(min(lim, 1<<30))
}

// egress converts a configured egress. A round-robin one gets its own
// position, so users do not disturb each other's turns.
func egress(e config.Egress) socks.Egress {
	out := socks.Egress{
		Interfaces: e.Interfaces,
		Strategy:   strategies[e.Strategy],
		Ingress:    e.Interface == config.Ingress,
		Source:     e.SourceIP,
		Mark:       e.Mark,
	}
	if out.Strategy == socks.RoundRobin {
		out.Turn = new(atomic.Uint64)
	}
	if e.Interface != "" && !out.Ingress {
		out.Interfaces = []string{e.Interface}
	}
	return out
}

var strategies = map[string]socks.Strategy{
	"":                        socks.Failover,
	config.StrategyFailover:   socks.Failover,
	config.StrategyRoundRobin: socks.RoundRobin,
	config.StrategyHash:       socks.Hash,
}

// userRate is u's rate limit; config has checked and defaulted it.
func userRate(u config.User) socks.Rate {
	if u.RateLimit <= 0 {
		return socks.Rate{}
	}
	return socks.Rate{BytesPerSec: u.RateLimit, Burst: int(u.RateBurst)}
}

// replyFilters maps the udp_reply_filter values config accepts.
var replyFilters = map[string]socks.ReplyFilter{
	"address-port": socks.FilterAddressPort,
	"address":      socks.FilterAddress,
	"none":         socks.FilterNone,
}

// reportHost warns about what will make flows fail or is unsafe, without
// refusing to start: an interface may appear later (a hot-plugged ENI).
func reportHost(cfg *config.Config, log *zap.Logger) {
	if len(cfg.Users) == 0 {
		log.Warn("no users configured: accepting clients without authentication",
			zap.Strings("listen", cfg.Server.Listen))
	}
	hashes := make([]string, 0, len(cfg.Users))
	for _, u := range cfg.Users {
		if u.PasswordHash != "" {
			hashes = append(hashes, u.PasswordHash)
		}
	}
	if lo, hi := auth.Costs(hashes); lo != hi {
		log.Warn("users' bcrypt costs differ: every failed login costs as much as the highest, so the cheaper hashes are easier to crack offline for the same CPU; rehash them at one cost",
			zap.Int("lowest_cost", lo), zap.Int("highest_cost", hi))
	}
	for i, u := range cfg.Users {
		if u.Password != "" {
			log.Warn("user has a plaintext password; use password_hash (ifsocks hash-password)",
				zap.String("user", u.Name), zap.Int("index", i))
		}
		for _, n := range u.Egress.Names() {
			if err := bind.CheckInterface(n); err != nil {
				log.Warn("egress interface not usable; the user's flows will fail over or fail with 0x03 until it is",
					zap.String("user", u.Name), zap.String("interface", n), zap.Error(err))
			}
		}
		if ip := u.SourceIP; ip.IsValid() {
			if _, ok := bind.AddrOwner(ip); !ok {
				log.Warn("source_ip is not an address of this host; the user's flows will fail with 0x03 until it is",
					zap.String("user", u.Name), zap.Stringer("source_ip", ip))
			}
		}
	}
}
