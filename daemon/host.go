package daemon

import (
	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"go.uber.org/zap"
)

// Looking at the host is kept out of Settings, which only converts a
// config.Config: the same config gives the same settings on any host.

// reportHost warns about what will make flows fail or is unsafe, without
// refusing to start: an interface may appear later (a hot-plugged ENI).
func reportHost(cfg *config.Config, log *zap.Logger) {
	if !cfg.HasUsers() {
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
		reportPool(log.With(zap.String("user", u.Name)), u.Egress)
	}
	for _, l := range cfg.Listeners {
		reportPool(log.With(zap.String("listener", l.Address)), l.Egress)
	}
}

// reportPool warns about source_ips entries whose flows will get 0x03:
// with interface, one the host does not take as its own (no local route);
// without, one no interface holds; and a pool spread over several NICs.
// Only the first usable address of each entry is looked at (ifsocks -check
// tells more).
func reportPool(log *zap.Logger, e config.Egress) {
	nics := map[string]bool{}
	for _, p := range e.SourceIPs {
		a := p.Addr()
		if p.Bits() < a.BitLen() {
			a = a.Next() // not the anycast or network address
		}
		if e.Interface != "" {
			if !bind.IsLocal(a) {
				log.Warn("source_ips entry has no local route; its flows will fail with 0x03 until one is added (ip route add local PREFIX dev lo)",
					zap.Stringer("entry", p), zap.String("interface", e.Interface))
			}
			continue
		}
		owner, ok := bind.AddrOwner(a)
		if !ok {
			log.Warn("source_ips entry is not an address of this host; without interface its flows will fail with 0x03 until it is",
				zap.Stringer("entry", p))
			continue
		}
		nics[owner] = true
	}
	if len(nics) > 1 {
		log.Warn("source_ips addresses sit on several interfaces; set interface to give the pool one NIC")
	}
}

// handshakeCap is max_handshakes when unset: the share of the descriptor
// limit (RLIMIT_NOFILE, read now: at start and at each reload) that
// clients in their handshake may hold.
func handshakeCap() int {
	return int(min(noFileLimit()/config.NoFileShareForHandshakes, 1<<30))
}
