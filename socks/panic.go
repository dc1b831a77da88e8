package socks

import (
	"fmt"
	"net/http"
	"runtime/debug"

	"go.uber.org/zap"
)

// Panic isolation. Every goroutine of a connection (its serve goroutine,
// the relay's copiers and completion, a UDP association's relay
// goroutines, BIND's wait on the client) recovers a panic: a bug
// triggered by one client ends that client's connection, with an error
// line carrying the stack and ifsocks_panics_total counting it, and every
// other flow and the daemon go on. The recovery costs one deferred call
// per goroutine, nothing per byte or datagram.
//
// Timer callbacks (idle timeouts) are not wrapped: they only read clocks
// and close sockets.

// Where a panic was recovered: the label of ifsocks_panics_total.
const (
	panicConn          = "conn"           // handshake, dial, UDP association setup and control
	panicRelay         = "relay"          // a TCP relay copier (relay.PanicError)
	panicRelayDone     = "relay_done"     // the end of a relayed flow: its log line and accounting
	panicUDPUpstream   = "udp_upstream"   // datagrams from the client
	panicUDPDownstream = "udp_downstream" // datagrams to the client
	panicBindWait      = "bind_wait"      // BIND's watch on the client while it waits for the peer
	panicHTTP          = "http"           // an HTTP request's handling (net/http's handler goroutine)
	panicHTTPDial      = "http_dial"      // an HTTP upstream dial (net/http's transport goroutine)
)

// recoverConn, deferred at the top of a goroutine of sc, turns a panic
// into the end of sc alone. It must be the deferred function itself, so
// that recover sees the panic.
func (s *Server) recoverConn(sc *serverConn, where string) {
	if p := recover(); p != nil {
		s.panicked(sc, where, p, debug.Stack())
	}
}

// recoverConnAt is recoverConn for a goroutine whose part changes as it
// runs (a UDP association's one relay goroutine): *where is read at the
// panic.
func (s *Server) recoverConnAt(sc *serverConn, where *string) {
	if p := recover(); p != nil {
		s.panicked(sc, *where, p, debug.Stack())
	}
}

// panicked logs and counts a recovered panic and closes sc's connections
// (the client's and the upstream one), which ends its other goroutines.
func (s *Server) panicked(sc *serverConn, where string, p any, stack []byte) {
	s.mu.Lock()
	user := sc.user
	sc.close()
	s.mu.Unlock()
	s.settings.Load().Metrics.Panic(where)
	s.log.Error("panic in a connection goroutine: that connection is closed, the daemon goes on",
		zap.String("where", where),
		zap.Stringer("client", sc.clientAddr()),
		sc.listenerField(), sc.listenerNameField(),
		zap.String("user", logSafe(user)),
		zap.String("panic", logSafe(fmt.Sprint(p))),
		zap.ByteString("stack", stack))
}

// recoverHandler, deferred by the httpConn methods that run in net/http's
// handler goroutine, logs and counts a panic of ours like any other, then
// aborts the handler with http.ErrAbortHandler: net/http, which recovers
// handler panics itself, then closes the connection without logging it
// again. net/http's own aborts pass through untouched.
func (h *httpConn) recoverHandler() {
	p := recover()
	if p == nil {
		return
	}
	if p != http.ErrAbortHandler {
		h.sc.srv.panicked(h.sc, panicHTTP, p, debug.Stack())
	}
	panic(http.ErrAbortHandler)
}

// recoverDial, deferred by Dial, which runs in net/http's transport
// goroutines where nothing recovers a panic: it logs and counts it, closes
// the connection, and fails the dial instead.
func (h *httpConn) recoverDial(err *error) {
	if p := recover(); p != nil {
		h.sc.srv.panicked(h.sc, panicHTTPDial, p, debug.Stack())
		*err = &dialError{err: fmt.Errorf("panic in dial: %v", p)}
	}
}
