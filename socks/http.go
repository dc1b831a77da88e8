package socks

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/httpproxy"
	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/zap"
)

// serveHTTP serves a connection whose first byte was not a SOCKS version:
// package httpproxy speaks HTTP, and calls back into httpConn for every
// decision, so CONNECT and forwarded requests take the path SOCKS flows
// take. See serve for the result.
func (sc *serverConn) serveHTTP(hs *hsReader, rec *record) bool {
	early := hs.detach()
	// net/http sets a read deadline for each request head itself
	// (handshake_timeout) and one for the idle wait between requests
	// (idle_timeout); the accept-time deadline must not cut responses.
	sc.conn.SetWriteDeadline(time.Time{})
	hc := &httpConn{sc: sc, base: *rec}
	opt := httpproxy.Options{
		HeaderTimeout: sc.st.HandshakeTimeout,
		IdleTimeout:   sc.st.IdleTimeout,
		AuthRequired:  sc.needsPassword(),
		ErrorLog:      sc.srv.httpErrorLog(),
	}
	handedOff := httpproxy.Serve(sc.conn, early, opt, hc)
	if hc.requests > 0 {
		sc.srv.log.Info("http connection",
			zap.Stringer("client", rec.client),
			sc.listenerField(), sc.listenerNameField(),
			zap.Int("requests", hc.requests),
			zap.Int64("bytes_up", hc.up),
			zap.Int64("bytes_down", hc.down),
			zap.Duration("duration", time.Since(rec.start)))
	}
	return handedOff
}

// httpErrorLog is where net/http's own complaints about a connection go:
// debug lines, since they are about clients that could not speak HTTP.
func (s *Server) httpErrorLog() *log.Logger {
	s.httpLogOnce.Do(func() {
		s.httpLog, _ = zap.NewStdLogAt(s.log.With(zap.String("protocol", protoHTTP)), zap.DebugLevel)
	})
	return s.httpLog
}

// httpConn is the server core as httpproxy sees one client connection
// (httpproxy.Backend). Its methods run on the connection's one request
// goroutine, except Dial.
type httpConn struct {
	sc   *serverConn
	base record // client, start and listener of the connection

	started  bool
	requests int
	up, down int64
}

// record starts the flow record of one request.
// user is the login name: "USER-session-KEY" is split as SOCKS5 does
// (splitSession), so the record has USER and the session key.
func (h *httpConn) record(proto, user, method string) *record {
	rec := h.base
	rec.start = time.Now()
	rec.protocol, rec.method = proto, method
	rec.user, rec.session = h.sc.st.splitSession(h.sc.lis, user)
	return &rec
}

// Idle: the connection waits for its next request. It carries no flow
// then, so Shutdown closes it as it closes connections in their
// handshake (and closes it now if shutdown has begun), instead of
// waiting for a kept-alive connection that may never send again.
func (h *httpConn) Idle() { h.sc.srv.idle(h.sc) }

// Started gives back the handshake slot once a request head is in.
func (h *httpConn) Started() {
	if !h.started {
		h.started = true
		h.sc.srv.endHandshake(h.sc)
	}
}

func (h *httpConn) Login(user, pass string) error {
	defer h.recoverHandler()
	name, _ := h.sc.st.splitSession(h.sc.lis, user)
	err := h.sc.login(h.base.client.Addr(), name, pass)
	if err != nil {
		rec := h.base
		rec.user = name
		h.sc.logHandshake(&rec, err)
	}
	return err
}

func (h *httpConn) Connect(user, target string, rep httpproxy.Reply) bool {
	defer h.recoverHandler()
	rec := h.record(protoHTTPConnect, user, http.MethodConnect)
	h.sc.ans = httpAnswer{rep: rep, rec: rec}
	dst, err := parseTarget(target)
	rec.target = dst
	if err != nil {
		h.sc.refuse(rec, RepAddrUnsupported, outcomeBadRequest, err)
		return false
	}
	return h.sc.startConnect(rec, rec.user, dst, nil)
}

func (h *httpConn) Admit(user, target, method string, rep httpproxy.Reply) bool {
	defer h.recoverHandler()
	sc := h.sc
	rec := h.record(protoHTTP, user, method)
	sc.ans = httpAnswer{rep: rep, rec: rec}
	dst, err := parseTarget(target)
	rec.target = dst
	if err != nil {
		sc.refuse(rec, RepAddrUnsupported, outcomeBadRequest, err)
		return false
	}
	// The connection holds one flow of max_connections from its first
	// forwarded request to its end, however many requests it carries.
	if sc.flow == nil {
		u, _, ok := sc.flowUser(rec, rec.user)
		if !ok || !sc.acquireFlow(rec, rec.user, u) {
			return false
		}
	} else if err := sc.acct.Check(); err != nil {
		// Later requests of the connection meet the quota too.
		sc.refuse(rec, RepNotAllowed, outcomeQuota, err)
		return false
	}
	if !sc.beginFlow(rec) {
		return false
	}
	return true
}

// upstream is an upstream connection of forwarded requests, with what
// their flow records need of how it was opened, paced by the user's
// rate_limit (the limiters a CONNECT's relay would use) when it has one.
type upstream struct {
	*net.TCPConn
	iface    string
	skipped  []string
	rotation string
	lim      relay.Limits
	ctx      context.Context // ends the waits for tokens when the server closes
	// cnt are the user's accounting counters: forwarded requests are
	// counted as they cross the upstream connection (heads included),
	// as a relay counts a tunnel.
	cnt relay.Counts
}

// Read reads at most a burst, then waits for the tokens of what it read:
// the client gets the origin's bytes at the user's rate.
func (u *upstream) Read(p []byte) (int, error) {
	if u.lim.Down != nil {
		if b := u.lim.Down.Burst(); b > 0 && len(p) > b {
			p = p[:b]
		}
	}
	n, err := u.TCPConn.Read(p)
	if n > 0 && u.cnt.Down != nil {
		u.cnt.Down.Add(int64(n))
	}
	if n > 0 && u.lim.Down != nil {
		if werr := u.lim.Down.WaitN(u.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// Write sends p a burst at a time, each once its tokens are there.
func (u *upstream) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := len(p) - done
		if u.lim.Up != nil {
			if b := u.lim.Up.Burst(); b > 0 && n > b {
				n = b
			}
			if err := u.lim.Up.WaitN(u.ctx, n); err != nil {
				return done, err
			}
		}
		w, err := u.TCPConn.Write(p[done : done+n])
		done += w
		if w > 0 && u.cnt.Up != nil {
			u.cnt.Up.Add(int64(w))
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// dialError is a failure to open an upstream connection, with the
// interface it happened on for the flow record.
type dialError struct {
	iface   string
	skipped []string
	err     error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// Dial opens an upstream connection of user's forwarded requests by the
// same egress plan, resolution, policy check and dial as a CONNECT.
func (h *httpConn) Dial(ctx context.Context, user, addr string) (_ net.Conn, err error) {
	defer h.recoverDial(&err)
	sc := h.sc
	// The settings current now, read here rather than from sc.st: Dial
	// runs in the HTTP transport's goroutines, beside the one serving
	// the connection, which may be refreshing sc.st.
	st := sc.srv.Settings()
	dst, err := parseTarget(addr)
	if err != nil {
		return nil, &dialError{err: err}
	}
	name, session := st.splitSession(sc.lis, user)
	u, ok := sc.userOf(st, name)
	if name != "" && !ok {
		return nil, &dialError{err: fmt.Errorf("user %q has no egress settings", name)}
	}
	eg := sc.egressOf(st, name, &u)
	ctx, cancel := context.WithTimeout(ctx, st.ConnectTimeout)
	defer cancel()
	stop := context.AfterFunc(sc.srv.ctx, cancel)
	defer stop()
	start := time.Now()
	up, use, err := sc.dialTarget(ctx, st, eg, dst, flowID{user: name, session: session})
	iface := use.route.Interface
	st.Metrics.Dial(iface, time.Since(start), err == nil)
	if err != nil {
		return nil, &dialError{iface: iface, skipped: use.skipped, err: err}
	}
	if !sc.srv.setEgress(sc, iface, up) {
		cut := sc.srv.endReason(sc)
		if cut == nil {
			cut = errors.New("server is shutting down")
		}
		return nil, &dialError{iface: iface, err: cut}
	}
	return &upstream{TCPConn: up, iface: iface, skipped: use.skipped, rotation: use.rotation,
		lim: sc.relayLimits(u), ctx: sc.srv.ctx, cnt: sc.flowCounts()}, nil
}

func (h *httpConn) Status(err error) int {
	var de *dialError
	switch {
	case errors.As(err, &de):
		return httpStatus(replyFor(err), err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway // the origin's answer was not HTTP, or broke off
}

// Forwarded writes the flow line of a forwarded request.
func (h *httpConn) Forwarded(ex *httpproxy.Exchange) {
	defer h.recoverHandler()
	rec := h.record(protoHTTP, ex.User, ex.Method)
	rec.start = ex.Start
	rec.target, _ = parseTarget(ex.Target)
	rec.status = ex.Status
	rec.up, rec.down = ex.Up, ex.Down
	if up, ok := ex.Conn.(*upstream); ok {
		rec.iface, rec.skipped, rec.rotation = up.iface, up.skipped, up.rotation
		rec.remote, rec.local = addrPortOf(up.RemoteAddr()), addrPortOf(up.LocalAddr())
	}
	var de *dialError
	if errors.As(ex.Err, &de) {
		rec.iface, rec.skipped = de.iface, de.skipped
	}
	h.requests++
	h.up += ex.Up
	h.down += ex.Down
	lvl := zap.InfoLevel
	switch {
	case ex.Err == nil:
		rec.finish(RepSucceeded, outcomeOK, nil)
	case de != nil:
		rep := replyFor(ex.Err)
		outcome := outcomeFor(rep)
		if ourFault(ex.Err) {
			outcome, lvl = outcomeError, zap.ErrorLevel
		}
		rec.finish(rep, outcome, ex.Err)
	default:
		// The origin's answer was not HTTP or broke off, or the client
		// left mid-answer: the peers' doing, as a reset is in a relay.
		rec.finish(RepSucceeded, outcomePeerReset, ex.Err)
	}
	h.sc.logFlow(rec, lvl)
}

// egressOf is the egress of user name's flows: the user's own, else the
// listener's. u is the user's settings (zero without authentication).
func (sc *serverConn) egressOf(st *Settings, name string, u *User) *Egress {
	if name == "" {
		*u = st.NoAuthUser
		if sc.lis != nil {
			*u = User{Egress: sc.lis.Egress, Account: sc.lis.Account}
		}
	}
	if u.Egress.IsZero() && sc.lis != nil {
		return &sc.lis.Egress
	}
	return &u.Egress
}

// parseTarget parses a "host:port" of an HTTP request (CONNECT authority
// or the Transport's dial address) into a flow target.
func parseTarget(hostport string) (Addr, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return Addr{Name: hostport}, fmt.Errorf("target %q: %w", hostport, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return Addr{Name: host}, fmt.Errorf("target %q: bad port", hostport)
	}
	a := Addr{Port: uint16(n)}
	if ip, ok := parseIPLiteral(host); ok {
		a.IP = ip
		return a, nil
	}
	a.Name = host
	if err := checkHostname(host); err != nil {
		return a, fmt.Errorf("target %q: %w", hostport, err)
	}
	return a, nil
}

// httpAnswer answers a request of an HTTP connection for the core.
type httpAnswer struct {
	rep httpproxy.Reply
	rec *record
}

func (a httpAnswer) refusal(rep byte, err error) {
	a.rec.status = httpStatus(rep, err)
	hint := ""
	if errors.Is(err, accounting.ErrQuotaExceeded) {
		hint = err.Error()
	}
	a.rep.Refuse(a.rec.status, hint)
}

func (a httpAnswer) success(netip.AddrPort) ([]byte, error) {
	a.rec.status = http.StatusOK
	return a.rep.Establish()
}

// httpStatus maps a refusal (its RFC 1928 reply code and error) to an
// HTTP status: 403 refused by policy or a user's limit, 503 egress
// interface down or missing (or the server full or stopping), 502 the
// target unreachable or refusing, 504 a connect timeout, 400 a bad target.
func httpStatus(rep byte, err error) int {
	switch rep {
	case RepNotAllowed:
		return http.StatusForbidden
	case RepNetworkUnreachable:
		if errors.Is(err, bind.ErrNoInterface) || errors.Is(err, bind.ErrInterfaceDown) || errors.Is(err, bind.ErrNoSource) {
			return http.StatusServiceUnavailable
		}
		return http.StatusBadGateway
	case RepHostUnreachable, RepConnectionRefused:
		return http.StatusBadGateway
	case RepTTLExpired:
		return http.StatusGatewayTimeout
	case RepCommandUnsupported, RepAddrUnsupported:
		return http.StatusBadRequest
	}
	if ourFault(err) || errors.Is(err, syscall.EPERM) {
		return http.StatusInternalServerError
	}
	return http.StatusServiceUnavailable
}
