package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/link"
	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/socks"
	"go.uber.org/zap"
)

// Options are what main hands the daemon.
type Options struct {
	// Path is the configuration file, re-read on reload; "" when running
	// on the built-in default.
	Path   string
	Config *config.Config
	Log    *zap.Logger
	// Level is the logger's level, changed by a reload that changes
	// log.level.
	Level zap.AtomicLevel
	// Reload delivers SIGHUP.
	Reload <-chan os.Signal
	// Pprof, when set, is an address to serve net/http/pprof on.
	Pprof string
	// Now is the clock of accounting periods; nil means time.Now.
	Now func() time.Time
}

type daemon struct {
	opts    Options
	log     *zap.Logger
	cfg     *config.Config // the configuration in force
	srv     *socks.Server
	metrics *metrics.Metrics
	watcher *link.Watcher
	lns     map[string]*listener // by address as written in the config
	// ledger counts traffic per user; nil when accounting is off or its
	// database failed at start (then accountingErr says why).
	ledger        *accounting.Ledger
	accountingErr error
	backend       *remoteBackend // the auth backend in force; nil for file users

	wg       sync.WaitGroup // Serve loops, the watcher, the metrics server
	serveErr chan error     // a listener failed on its own
}

// Run serves opts.Config until ctx is done, then shuts down: listeners
// close at once, flows get server.shutdown_timeout to finish, the rest are
// cut. It returns an error if the service cannot start or a listener fails.
func Run(ctx context.Context, opts Options) error {
	cfg := opts.Config
	var err error
	d := &daemon{
		opts:     opts,
		log:      opts.Log,
		cfg:      cfg,
		metrics:  metrics.New(),
		serveErr: make(chan error, 1),
	}
	d.watcher = d.newWatcher(cfg)
	if d.ledger, err = d.openAccounting(cfg); err != nil {
		return err
	}
	// Last, after every flow and goroutine has ended: the final counts.
	defer d.closeAccounting()
	st, backend, err := d.settings(cfg)
	if err != nil {
		return err
	}
	d.backend = backend
	// After the server's connections are gone (below, in order): no
	// login is still asking.
	defer func() { d.backend.close() }()
	reportHost(cfg, d.log)
	lns, err := listen(ctx, cfg.ListenAddresses())
	if err != nil {
		return err
	}
	d.lns = lns
	d.srv = socks.New(d.log, st)
	// On every return, after the deferred stops below: no goroutine the
	// daemon started outlives Run.
	defer d.wg.Wait()
	stopMetrics, err := d.serveHTTP("metrics", cfg.Metrics.Listen, d.metricsMux())
	if err != nil {
		closeListeners(lns)
		return err
	}
	defer stopMetrics()
	stopPprof, err := d.serveHTTP("pprof", opts.Pprof, pprofMux())
	if err != nil {
		closeListeners(lns)
		return err
	}
	defer stopPprof()
	watchCtx, stopWatch := context.WithCancel(context.Background())
	d.runWatcher(watchCtx)
	d.runAccounting(watchCtx)
	for _, l := range d.lns {
		d.serve(l)
	}
	d.metrics.Loaded()
	notify(d.log, notifyReady)
	d.log.Info("ifsocks started", zap.String("config", cfg.Source), zap.Int("users", len(cfg.Users)),
		zap.String("auth_backend", string(cfg.Auth.Backend)),
		zap.Int("max_handshakes", st.Limits.MaxHandshakes), zap.Uint64("nofile", noFileLimit()))

	runErr := d.loop(ctx)

	notify(d.log, notifyStopping)
	grace := d.cfg.Server.ShutdownTimeout
	d.log.Info("shutting down", zap.Duration("grace", grace), zap.Int("connections", d.srv.ActiveConns()))
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := d.srv.Shutdown(sctx); err != nil {
		d.log.Warn("grace period over; remaining flows closed", zap.Error(err))
	}
	stopWatch()
	stopMetrics()
	stopPprof()
	d.wg.Wait()
	d.log.Info("ifsocks stopped")
	return runErr
}

// loop waits for the end, reloading on each SIGHUP.
func (d *daemon) loop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.opts.Reload:
			d.reload()
		case err := <-d.serveErr:
			d.log.Error("listener failed", zap.Error(err))
			return err
		}
	}
}

// settings builds the server settings for cfg, with this daemon's
// metrics and cfg's auth backend (nil for file users), which the caller
// closes when the settings are replaced.
func (d *daemon) settings(cfg *config.Config) (*socks.Settings, *remoteBackend, error) {
	st, err := Settings(cfg)
	if err != nil {
		return nil, nil, err
	}
	st.Metrics = d.metrics
	if cfg.Server.MaxHandshakes == config.MaxHandshakesFromNoFile {
		st.Limits.MaxHandshakes = handshakeCap()
	}
	if d.watcher != nil && d.watcher.Primed() {
		st.CheckInterface = d.checkInterface
		st.AddrOwner = d.watcher.Owner
	}
	if d.ledger != nil {
		for name, u := range st.Users {
			u.Account = d.ledger.Counter(name)
			st.Users[name] = u
		}
		for _, l := range cfg.Listeners {
			if sl := st.Listeners[l.Address]; sl != nil {
				sl.Account = d.ledger.Counter(listenerKey(l))
			}
		}
		st.NoAuthUser.Account = d.ledger.Counter(accounting.NoAuthKey)
	}
	b, err := newBackend(cfg, d.metrics, d.interfaceExists, d.ledger)
	if err != nil {
		return nil, nil, err
	}
	if b != nil {
		st.Backend = b.auth
	}
	return st, b, nil
}

// interfaceExists reports whether the host has an interface called name,
// from the watcher's state when it has one.
func (d *daemon) interfaceExists(name string) bool {
	if d.watcher != nil && d.watcher.Primed() {
		return d.watcher.State(name) != link.Missing
	}
	return !errors.Is(bind.CheckInterface(name), bind.ErrNoInterface)
}

// serve runs the accept loop of l in a goroutine the daemon waits for.
func (d *daemon) serve(l *listener) {
	d.log.Info("listening", zap.Stringer("addr", l.ln.Addr()))
	d.wg.Go(func() {
		err := d.srv.ServeListener(l.ln, l.addr)
		if errors.Is(err, socks.ErrServerClosed) || l.removed.Load() {
			return
		}
		select {
		case d.serveErr <- fmt.Errorf("serve %s: %w", l.addr, err):
		default: // one failure is enough to stop
		}
	})
}

// newWatcher follows the interfaces of cfg's users, listing them once now
// so that the per-flow interface check can use its state from the first
// flow. An interface that goes down or away ends its flows at once: their
// sockets could only stall.
func (d *daemon) newWatcher(cfg *config.Config) *link.Watcher {
	w := link.New(d.log, func(name string, old, new link.State) {
		if old == link.Up && new != link.Up {
			if n := d.srv.CloseInterface(name); n > 0 {
				d.log.Warn("closed the flows of a lost egress interface",
					zap.String("interface", name), zap.Stringer("state", new), zap.Int("flows", n))
			}
		}
	})
	w.Watch(interfaces(cfg))
	if err := w.Prime(); err != nil {
		d.log.Warn("cannot list interfaces; checking them per flow instead", zap.Error(err))
	}
	return w
}

// runWatcher starts following netlink events; ctx stops it.
func (d *daemon) runWatcher(ctx context.Context) {
	d.metrics.InterfaceStates(func() map[string]bool {
		out := map[string]bool{}
		for name, st := range d.watcher.Watched() {
			out[name] = st == link.Up
		}
		return out
	})
	d.wg.Go(func() {
		if err := d.watcher.Run(ctx); err != nil {
			d.log.Warn("not following interface changes", zap.Error(err))
		}
	})
}

// checkInterface answers the per-flow interface check from the watcher's
// state: no system call per flow.
func (d *daemon) checkInterface(name string) error {
	switch d.watcher.State(name) {
	case link.Up:
		return nil
	case link.Down:
		return &bind.Error{Interface: name, Err: bind.ErrInterfaceDown}
	}
	return &bind.Error{Interface: name, Err: bind.ErrNoInterface}
}

// interfaces lists the distinct egress interfaces of cfg.
func interfaces(cfg *config.Config) []string {
	seen := map[string]bool{}
	var out []string
	add := func(e config.Egress) {
		for _, n := range e.Names() {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	for _, u := range cfg.Users {
		add(u.Egress)
	}
	for _, l := range cfg.Listeners {
		add(l.Egress)
	}
	return out
}

func (d *daemon) metricsMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/usage", d.usageHandler)
	return mux
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveHTTP starts an HTTP endpoint (metrics, pprof) when addr is set. The
// returned function stops it; calling it again does nothing.
func (d *daemon) serveHTTP(what, addr string, h http.Handler) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen(listenNetwork(addr), addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen on %s: %w", what, addr, err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	d.log.Info("serving "+what, zap.Stringer("addr", ln.Addr()))
	d.wg.Go(func() {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			d.log.Error(what+" server failed", zap.Error(err))
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			hs.Shutdown(ctx)
		})
	}, nil
}
