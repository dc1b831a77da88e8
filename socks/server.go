// Package socks is the proxy server of ifsocks: RFC 1928 negotiation,
// RFC 1929 username/password authentication, and the CONNECT, BIND and
// UDP ASSOCIATE commands, with every outbound socket of a user — DNS queries
// included — bound to that user's interface.
//
// It is also the core every protocol of a listen address goes through: it
// accepts, tells the protocol by the first byte (SOCKS5, SOCKS4/4a, or HTTP,
// whose protocol handling is package httpproxy's), authenticates, and runs
// the one egress plan, policy check, limits check, relay and flow record
// that every flow takes, whatever protocol asked for it (answerer is the
// only part that differs).
//
// The protocol is written from the RFCs. The server is shaped like
// net/http.Server: Serve(listener), Shutdown(ctx), Close. It does not open
// listeners, read configuration files or handle signals; the daemon package
// does that and hands the server its Settings, which can be replaced at any
// time (reload): they govern every step taken from then on (Update),
// without cutting running flows.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package socks

import (
	"context"
	"errors"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/zap"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("socks: server closed")

// Server serves SOCKS5 on any number of listeners.
type Server struct {
	log      *zap.Logger
	settings atomic.Pointer[Settings]

	// ctx is cancelled by Close or at the end of a Shutdown grace period;
	// it aborts dials and name lookups in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	forced    bool // Close, or Shutdown past its deadline: flows are being cut
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	assocs    map[string]int // live UDP associations by limit key
	turn      atomic.Uint64  // round-robin position of egresses without their own
	wg        sync.WaitGroup // one per connection goroutine

	lim limitState // abuse limits (limits.go); has its own locks

	httpLogOnce sync.Once
	httpLog     *log.Logger // net/http's complaints, as debug lines (http.go)
}

// New returns a server using st for new connections.
func New(log *zap.Logger, st *Settings) *Server {
	s := &Server{
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		assocs:    make(map[string]int),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.settings.Store(st)
	s.initLimits(st)
	return s
}

// Update replaces the settings. They apply at once to every step not yet
// taken: a connection in its handshake checks its credentials against the
// users current when they arrive, and takes its user's egress and the
// destination policy current at the end of its handshake, however long
// ago it was accepted; a UDP association judges each datagram by the
// current policy; a BIND judges its peer by the policy current when the
// peer connects; the users' rate limits change for running flows too.
// What a running flow has already done stays: a relayed TCP flow keeps
// its target and egress, an association its outbound sockets.
func (s *Server) Update(st *Settings) {
	s.settings.Store(st)
	s.applyRates(st)
}

// Settings returns the settings new connections get.
func (s *Server) Settings() *Settings { return s.settings.Load() }

// Serve accepts connections on ln until it fails or the server is shut
// down, and always returns a non-nil error: ErrServerClosed after Shutdown
// or Close. ln is closed when Serve returns. ln must yield *net.TCPConn.
// Clients authenticate when Settings.Auth has users.
func (s *Server) Serve(ln net.Listener) error { return s.ServeListener(ln, "") }

// ServeListener is Serve for a listener that may have settings of its
// own: Settings.Listeners[name], looked up in the settings current at each
// accept, so a reload can change them on an open listener. Without an
// entry, it serves as Serve does.
func (s *Server) ServeListener(ln net.Listener, name string) error {
	if !s.trackListener(ln, true) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.trackListener(ln, false)
	// The address every log line of the listener's connections carries:
	// as configured (the settings key), else as bound.
	addr := name
	if addr == "" {
		addr = ln.Addr().String()
	}
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			// Out of descriptors and similar: wait and retry as
			// net/http does, instead of spinning on the error.
			if ne, ok := err.(net.Error); ok && !errors.Is(err, net.ErrClosed) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.String("listener", addr), listenerNameField(s.listenerName(name)),
					zap.Error(ne), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if _, ok := c.(*net.TCPConn); !ok {
			c.Close()
			continue
		}
		s.startConn(c, name, addr)
	}
}

// listenerName is the name of the listener served as key, if it has one.
func (s *Server) listenerName(key string) string {
	if l := s.settings.Load().Listeners[key]; l != nil {
		return l.Name
	}
	return ""
}

func (s *Server) trackListener(ln net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.listeners[ln] = struct{}{}
		return true
	}
	delete(s.listeners, ln)
	ln.Close()
	return true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) startConn(c net.Conn, listener, addr string) {
	sc := &serverConn{srv: s, conn: c, st: s.settings.Load(), lisAddr: addr, lisKey: listener}
	if listener != "" {
		sc.lis = sc.st.Listeners[listener]
		if sc.lis != nil {
			sc.lisName = sc.lis.Name
		}
		if client := addrPortOf(c.RemoteAddr()).Addr(); !sc.lis.allows(client) {
			// A firewall's answer: nothing is read or written, and
			// the line is a debug one, since scanners would fill the
			// log; the metric shows the volume.
			s.log.Debug("client not in allow_clients; closed", sc.listenerField(), sc.listenerNameField(), zap.Stringer("client", client))
			sc.st.Metrics.ConnRefused("not_allowed")
			c.Close()
			return
		}
	}
	if !s.admit(sc) {
		// A plain close, not a reset: a reset can reach the client
		// before its connect has returned and fail it with a less
		// clear error. The TIME_WAIT left here holds no descriptor.
		c.Close()
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.endHandshake(sc)
		c.Close()
		return
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		handedOff := false
		defer func() {
			if !handedOff {
				s.connDone(sc)
			}
		}()
		// Runs first: a panic in serve ends sc (closed, not handed
		// off), then connDone gives back its slots as for any end.
		defer s.recoverConn(sc, panicConn)
		growStack()
		handedOff = sc.serve()
	}()
}

// connDone ends the server's ownership of sc: after its serve goroutine
// returns or, for a relayed flow, when the relay has finished.
func (s *Server) connDone(sc *serverConn) {
	s.untrack(sc)
	s.releaseLimits(sc)
	s.wg.Done()
}

func (s *Server) untrack(sc *serverConn) {
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
}

// closeListeners marks the server closed and stops every Serve loop.
func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
}

// Shutdown stops accepting, closes connections that have not yet started a
// flow, and waits for running flows to end. When ctx ends first, the rest
// are closed and ctx's error is returned after their goroutines exit.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	// Connections still in their handshake are closed now; those that
	// finish it in the meantime are refused by beginFlow.
	s.closeWhere(func(sc *serverConn) bool { return !sc.active })
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	defer s.lim.guard.stop()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.forceClose()
		<-done
		return ctx.Err()
	}
}

// Close closes every listener and connection at once and waits for their
// goroutines.
func (s *Server) Close() error {
	s.closeListeners()
	s.forceClose()
	s.wg.Wait()
	s.lim.guard.stop()
	return nil
}

func (s *Server) forceClose() {
	s.cancel()
	s.mu.Lock()
	s.forced = true
	s.mu.Unlock()
	s.closeWhere(func(*serverConn) bool { return true })
}

// errShuttingDown refuses flows that would start after Shutdown began.
var errShuttingDown = errors.New("server is shutting down")

// beginFlow marks sc as carrying a flow of user, which Shutdown lets
// finish and CloseUsers can find. It fails with errShuttingDown once
// shutdown has begun, and with ErrUserRemoved when the current settings
// no longer have user: a reload stores its settings before it cuts the
// removed users' flows, and both sides take s.mu here, so a flow either
// starts before the cut (and is cut) or sees the new settings.
func (s *Server) beginFlow(sc *serverConn, user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errShuttingDown
	}
	if user != "" {
		if _, ok := sc.userOf(s.settings.Load(), user); !ok {
			return ErrUserRemoved
		}
	}
	sc.active, sc.user = true, user
	return nil
}

// idle marks sc, an HTTP connection between requests, as carrying no
// flow; once shutdown has begun, it closes it.
func (s *Server) idle(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.active = false
	if s.closed {
		sc.close()
	}
}

// setEgress records that sc's flow leaves by iface, and its upstream
// connection (nil for UDP) so that cutting the flow closes it too. If the
// flow was cut while its sockets were being opened, it closes up at once
// and reports false.
func (s *Server) setEgress(sc *serverConn, iface string, up net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc.ended != nil || s.forced {
		if up != nil {
			up.Close()
		}
		return false
	}
	sc.iface, sc.upstream = iface, up
	return true
}

// setRelay records the relay of sc's flow, through which cutting the
// flow closes it; if the flow was cut while the relay was starting, it
// closes it at once.
func (s *Server) setRelay(sc *serverConn, fl *relay.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.relay = fl
	if sc.ended != nil || s.forced {
		fl.Close()
	}
}

// endReason returns why the server cut sc's flow, or nil if it did not.
func (s *Server) endReason(sc *serverConn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sc.ended
}

// ErrInterfaceLost ends flows whose egress interface went down or away.
var ErrInterfaceLost = errors.New("egress interface went down or away")

// ErrUserRemoved ends flows of a user removed by a reload (with
// [server] reload_closes_removed).
var ErrUserRemoved = errors.New("user removed by configuration reload")

// CloseInterface ends the running flows that leave by iface, which has
// gone down or away: their sockets could only stall until a timeout. It
// returns how many were closed.
func (s *Server) CloseInterface(iface string) int {
	return s.cutFlows(ErrInterfaceLost, func(sc *serverConn) bool { return sc.iface == iface })
}

// CloseAccount ends the running flows counted under an accounting key
// whose quota is used up, with outcome "quota".
func (s *Server) CloseAccount(key string) int {
	return s.cutFlows(accounting.ErrQuotaExceeded, func(sc *serverConn) bool {
		return sc.acct != nil && sc.acct.Key() == key
	})
}

// CloseUsers ends the running flows of the named users.
func (s *Server) CloseUsers(users map[string]bool) int {
	return s.cutFlows(ErrUserRemoved, func(sc *serverConn) bool { return users[sc.user] })
}

func (s *Server) cutFlows(reason error, pred func(*serverConn) bool) int {
	n := 0
	s.closeWhere(func(sc *serverConn) bool {
		if !sc.active || sc.ended != nil || !pred(sc) {
			return false
		}
		sc.ended = reason
		n++
		return true
	})
	return n
}

func (s *Server) closeWhere(pred func(*serverConn) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		if pred(sc) {
			sc.close()
		}
	}
}

// ActiveConns is the number of open client connections, for tests and
// metrics.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// stackReserve is the stack growStack asks for: with the frames above
// it, more than a 4 KiB stack holds, so the runtime doubles it to 8 KiB,
// enough for the handshake, the dial and the flow's line through zap.
const stackReserve = 3584

// growStack makes the calling goroutine's stack grow now, while it holds
// few frames, if it would have to grow later. New goroutines start with
// the runtime's average stack size (4 KiB under the connection
// benchmark), less than a connection's goroutine needs at the dial (a
// dozen frames of package net) and a relay goroutine needs to write the
// flow's line (zap's encoder): the runtime copies a stack to grow it and
// adjusts every frame on it, which cost 3.7 % of the proxy's CPU per
// connection at those depths (pprof: runtime.newstack under planEgress
// and time.Time.AppendFormat), 0.7 % when grown here. A goroutine whose
// stack is big enough already only zeroes the reserve.
//
//go:noinline
func growStack() {
	var reserve [stackReserve]byte
	keep(&reserve)
}

// keep takes the reserve's address, so the compiler keeps it in
// growStack's frame.
//
//go:noinline
func keep(*[stackReserve]byte) {}
