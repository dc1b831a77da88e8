package daemon

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/ifsocks/ifsocks/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// reload re-reads the configuration file and, if it is valid and its new
// listeners can be opened, puts it in force for new connections at once:
// users, passwords, interfaces, policy, limits, listeners and the log
// level, for every step not yet taken (socks.Server.Update): connections
// still in their handshake authenticate against the new users, and UDP
// associations judge their next datagrams by the new policy. Running TCP
// flows keep their target and egress. On any error the running
// configuration stays untouched.
//
// Flows of users the new file removes run on until they end, unless
// server.reload_closes_removed is set. log.format and metrics.listen need a
// restart; a change to them is reported and otherwise ignored.
func (d *daemon) reload() {
	notify(d.log, notifyReloading())
	defer notify(d.log, notifyReady)
	if d.opts.Path == "" {
		d.log.Warn("reload requested, but running on the built-in default: nothing to re-read")
		return
	}
	cfg, err := config.Load(d.opts.Path)
	if err != nil {
		d.reloadFailed(err)
		return
	}
	st, backend, err := d.settings(cfg)
	if err != nil {
		d.reloadFailed(err)
		return
	}
	added, removed := diffListeners(d.lns, cfg.ListenAddresses())
	opened, err := d.openAdded(added, removed)
	if err != nil {
		backend.close()
		d.reloadFailed(err)
		return
	}

	old := d.cfg
	d.srv.Update(st)
	d.cfg = cfg
	// The new backend starts with an empty cache, as a new file user
	// store does: [auth] may have changed what the answers mean.
	d.backend.close()
	d.backend = backend
	for a, l := range opened {
		d.lns[a] = l
		d.serve(l)
	}
	for _, l := range removed {
		l.removed.Store(true)
		l.ln.Close()
		delete(d.lns, l.addr)
		d.log.Info("stopped listening", zap.String("addr", l.addr))
	}
	d.applyLog(old, cfg)
	if cfg.Metrics.Listen != old.Metrics.Listen {
		d.log.Warn("metrics.listen changed; it takes effect at the next restart",
			zap.String("running", old.Metrics.Listen), zap.String("configured", cfg.Metrics.Listen))
	}
	d.watcher.Watch(interfaces(cfg))
	d.reloadAccounting(old, cfg)
	gone := removedUsers(old, cfg)
	closed := 0
	if cfg.Server.ReloadClosesRemoved && len(gone) > 0 {
		closed = d.srv.CloseUsers(gone)
	}
	// A reload is also how an operator lets a blocked client in again.
	unblocked := d.srv.ClearAuthBlocks()
	reportHost(cfg, d.log)
	d.metrics.Reload(true)
	d.log.Info("configuration reloaded", zap.String("config", cfg.Source),
		zap.Int("users", len(cfg.Users)), zap.Int("users_removed", len(gone)),
		zap.Int("flows_closed", closed), zap.Int("auth_blocks_lifted", unblocked),
		zap.Int("max_handshakes", st.Limits.MaxHandshakes),
		zap.Int("listeners_added", len(opened)), zap.Int("listeners_removed", len(removed)))
}

// openAdded opens the added addresses while the old listeners still serve.
// When one cannot be opened because a listener the reload removes holds
// its port (10.0.0.5:1080 becoming 0.0.0.0:1080), those listeners are
// closed first and the open retried; if it still fails they are opened
// again, so a failed reload leaves the listeners as they were.
func (d *daemon) openAdded(added []string, removed []*listener) (map[string]*listener, error) {
	opened, err := listen(context.Background(), added)
	if !errors.Is(err, syscall.EADDRINUSE) {
		return opened, err
	}
	ports := map[string]bool{}
	for _, a := range added {
		if _, p, err := net.SplitHostPort(a); err == nil {
			ports[p] = true
		}
	}
	var freed []*listener
	for _, l := range removed {
		if _, p, err := net.SplitHostPort(l.addr); err == nil && ports[p] {
			l.removed.Store(true)
			l.ln.Close()
			freed = append(freed, l)
		}
	}
	if len(freed) == 0 {
		return nil, err
	}
	opened, err = listen(context.Background(), added)
	if err == nil {
		return opened, nil
	}
	for _, l := range freed {
		back, berr := listen(context.Background(), []string{l.addr})
		if berr != nil {
			d.log.Error("could not reopen a listener after a failed reload", zap.String("addr", l.addr), zap.Error(berr))
			delete(d.lns, l.addr)
			continue
		}
		d.lns[l.addr] = back[l.addr]
		d.serve(back[l.addr])
	}
	return nil, err
}

func (d *daemon) reloadFailed(err error) {
	d.metrics.Reload(false)
	d.log.Error("reload failed; the running configuration is unchanged", zap.Error(err))
}

// applyLog applies a new log level; the format is fixed at start.
func (d *daemon) applyLog(old, cfg *config.Config) {
	if cfg.Log.Level != old.Log.Level {
		if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
			d.opts.Level.SetLevel(lvl)
		}
	}
	if cfg.Log.Format != old.Log.Format {
		d.log.Warn("log.format changed; it takes effect at the next restart",
			zap.String("running", old.Log.Format), zap.String("configured", cfg.Log.Format))
	}
}

// removedUsers returns the users of old that cfg no longer has.
func removedUsers(old, cfg *config.Config) map[string]bool {
	keep := make(map[string]bool, len(cfg.Users))
	for _, u := range cfg.Users {
		keep[u.Name] = true
	}
	gone := map[string]bool{}
	for _, u := range old.Users {
		if !keep[u.Name] {
			gone[u.Name] = true
		}
	}
	return gone
}
