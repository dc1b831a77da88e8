// Package daemon runs ifsocks as a service: it turns a validated
// config.Config into a socks.Server with its listeners, reports on the
// host's state at start (missing interfaces, plaintext passwords), and stops
// gracefully when its context ends.
//
// It does not parse flags or build the logger (main does) and does not speak
// SOCKS (package socks does).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/policy"
	"github.com/ifsocks/ifsocks/socks"
	"go.uber.org/zap"
)

// Run serves cfg until ctx is done, then shuts down: listeners close at
// once, flows get cfg.Server.ShutdownTimeout to finish, the rest are cut.
// It returns an error if the service cannot start or a listener fails.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	st, err := Settings(cfg)
	if err != nil {
		return err
	}
	reportHost(cfg, log)
	lns, err := listen(ctx, cfg.Server.Listen)
	if err != nil {
		return err
	}
	srv := socks.New(log, st)
	serveErr := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		log.Info("listening", zap.Stringer("addr", ln.Addr()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); !errors.Is(err, socks.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve %s: %w", ln.Addr(), err)
			}
		}()
	}
	log.Info("ifsocks started", zap.String("config", cfg.Source), zap.Int("users", len(cfg.Users)))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
		log.Error("listener failed", zap.Error(runErr))
	}
	log.Info("shutting down", zap.Duration("grace", cfg.Server.ShutdownTimeout),
		zap.Int("connections", srv.ActiveConns()))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("grace period over; remaining flows closed", zap.Error(err))
	}
	wg.Wait()
	log.Info("ifsocks stopped")
	return runErr
}

// Settings builds the server settings for cfg.
func Settings(cfg *config.Config) (*socks.Settings, error) {
	accounts := make([]auth.Account, 0, len(cfg.Users))
	users := make(map[string]socks.User, len(cfg.Users))
	for _, u := range cfg.Users {
		accounts = append(accounts, auth.Account{Name: u.Name, Hash: u.PasswordHash, Password: u.Password})
		users[u.Name] = socks.User{Interface: u.Interface, MaxAssociations: u.MaxAssociations}
	}
	store, err := auth.NewStore(accounts, auth.Options{})
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	return &socks.Settings{
		Auth:             store,
		Users:            users,
		Policy:           policy.New(cfg.Server.Deny, cfg.Server.DenyOwnAddresses),
		HandshakeTimeout: cfg.Server.HandshakeTimeout,
		ConnectTimeout:   cfg.Server.ConnectTimeout,
		IdleTimeout:      cfg.Server.IdleTimeout,
		UDP: socks.UDPSettings{
			PortMin:         cfg.Server.UDPPortMin,
			PortMax:         cfg.Server.UDPPortMax,
			Advertise:       cfg.Server.UDPAdvertise,
			MaxAssociations: cfg.Server.MaxAssociations,
			MaxDatagram:     cfg.Server.UDPMaxDatagram,
			ReplyFilter:     replyFilters[cfg.Server.UDPReplyFilter],
		},
	}, nil
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
	for i, u := range cfg.Users {
		if u.Password != "" {
			log.Warn("user has a plaintext password; use password_hash (ifsocks hash-password)",
				zap.String("user", u.Name), zap.Int("index", i))
		}
		if u.Interface == "" {
			continue
		}
		if err := bind.CheckInterface(u.Interface); err != nil {
			log.Warn("egress interface not usable; the user's flows will fail with 0x03 until it is",
				zap.String("user", u.Name), zap.String("interface", u.Interface), zap.Error(err))
		}
	}
}

// listen opens every configured address, or none: a daemon that cannot
// listen where it was told should not start half-way.
func listen(ctx context.Context, addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	var lc net.ListenConfig
	for _, a := range addrs {
		ln, err := lc.Listen(ctx, listenNetwork(a), a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// listenNetwork picks tcp4 or tcp6 for an IP address so that "[::]:1080"
// and "0.0.0.0:1080" can both be configured: "tcp6" sets IPV6_V6ONLY,
// where plain "tcp" on [::] would take the IPv4 port too. An empty host
// ("":1080) means both families on one socket.
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "tcp"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "tcp"
	}
	if ip.Is4() || ip.Is4In6() {
		return "tcp4"
	}
	return "tcp6"
}
