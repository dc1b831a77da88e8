package socks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/auth"
	"go.uber.org/zap"
)

// errNoMethod: the client offered no method the server accepts.
var errNoMethod = errors.New("no acceptable authentication method")

// serverConn is one accepted client connection.
type serverConn struct {
	srv  *Server
	conn net.Conn  // a *net.TCPConn from Serve; net.Pipe in fuzz tests
	st   *Settings // snapshot taken at accept; reloads do not change it
	lis  *Listener // the listener's settings; nil for a plain Serve
	// lisAddr and lisName identify the listener in every log line of
	// the connection (listener, listener_name); lisName may be empty.
	lisAddr, lisName string
	// The fields below are guarded by srv.mu. active is set once the
	// connection carries a flow that Shutdown should let finish; user and
	// iface say whose flow and where it leaves, so a reload or a lost
	// interface can find it; ended, when set, is why the server cut it.
	active   bool
	user     string
	iface    string
	ended    error
	upstream net.Conn // the target connection of a CONNECT, once dialled
	stop     func()   // cancels a paced relay's context (flowlimit.go); set once, under srv.mu

	// Limit bookkeeping (limits.go, flowlimit.go), used by the connection's own
	// goroutines only: the client key holding a handshake slot (invalid
	// once given back), and the user's running flows once counted.
	hsKey    netip.Addr
	flow     *userFlows
	flowName string
	// acct counts the flow's bytes (nil without accounting); set before
	// the flow begins, then read under srv.mu to cut flows over quota.
	acct *accounting.Counter
}

// close closes the client connection and, if there is one, the upstream
// connection: a relay whose client has half-closed only waits on the
// upstream, so closing the client alone would not end it. Called with
// srv.mu held.
func (sc *serverConn) close() {
	if sc.stop != nil {
		sc.stop()
	}
	sc.conn.Close()
	if sc.upstream != nil {
		sc.upstream.Close()
	}
}

// serve runs the connection from greeting to the end of its flow. It
// returns true when it has handed the connection to a relay, which then
// owns it (and ends it with srv.connDone); false when the connection is
// finished and closed.
func (sc *serverConn) serve() (handedOff bool) {
	defer func() {
		if !handedOff {
			sc.conn.Close()
		}
	}()
	rec := &record{start: time.Now(), client: addrPortOf(sc.conn.RemoteAddr()), listener: sc.lisAddr, listenerName: sc.lisName}
	st := sc.st
	if st.HandshakeTimeout > 0 {
		sc.conn.SetDeadline(rec.start.Add(st.HandshakeTimeout))
	}
	hs := newHSReader(sc.conn)
	name, err := sc.negotiate(hs, rec)
	if err != nil {
		hs.detach()
		sc.logHandshake(rec, err)
		return false
	}
	req, err := readRequest(hs)
	early := hs.detach()
	sc.srv.endHandshake(sc)
	rec.target = req.Dst
	if err != nil {
		var re *requestError
		if !errors.As(err, &re) {
			sc.logHandshake(rec, err)
			return false
		}
		writeReply(sc.conn, re.reply, netip.AddrPort{})
		rec.finish(re.reply, outcomeBadRequest, err)
		sc.logFlow(rec, zap.WarnLevel)
		return false
	}
	sc.conn.SetDeadline(time.Time{})
	user, ok := st.Users[name]
	if name != "" && !ok {
		// Auth accepted a name the egress map lacks: a bug in how the
		// settings were built. Refuse rather than use kernel routing.
		sc.refuse(rec, RepGeneralFailure, outcomeError, fmt.Errorf("user %q has no egress settings", name))
		return false
	}
	if name == "" {
		user = st.NoAuthUser
		if sc.lis != nil {
			user = User{Egress: sc.lis.Egress, Account: sc.lis.Account}
		}
	}
	eg := &user.Egress
	if eg.IsZero() && sc.lis != nil {
		eg = &sc.lis.Egress
	}
	if req.Cmd <= cmdUDPAssociate && req.Cmd >= cmdConnect && !sc.acquireFlow(rec, name, user) {
		return false
	}
	switch req.Cmd {
	case cmdConnect:
		return sc.connect(rec, req.Dst, user, eg, early)
	case cmdBind:
		return sc.bindPeer(rec, req.Dst, user, eg)
	case cmdUDPAssociate:
		sc.associate(rec, req.Dst, user, eg, name)
	default:
		sc.refuse(rec, RepCommandUnsupported, outcomeBadRequest, fmt.Errorf("command %#x not supported", req.Cmd))
	}
	return false
}

// refuse replies rep with no bound address, and logs the flow.
func (sc *serverConn) refuse(rec *record, rep byte, outcome string, err error) {
	writeReply(sc.conn, rep, netip.AddrPort{})
	rec.finish(rep, outcome, err)
	lvl := zap.InfoLevel
	if outcome == outcomeError {
		lvl = zap.ErrorLevel
	}
	sc.logFlow(rec, lvl)
}

// negotiate runs method selection and, when users are configured, RFC 1929
// authentication. It returns the user name, "" without authentication.
func (sc *serverConn) negotiate(hs *hsReader, rec *record) (string, error) {
	methods, err := readGreeting(hs)
	if err != nil {
		return "", err
	}
	want := byte(methodNoAuth)
	if sc.st.Auth != nil && sc.st.Auth.Len() > 0 && (sc.lis == nil || !sc.lis.NoAuth) {
		want = methodUserPass
	}
	if !bytes.Contains(methods, []byte{want}) {
		sc.st.Metrics.AuthFailure("no_method")
		sc.conn.Write([]byte{socks5Version, methodNoAccept})
		return "", errNoMethod
	}
	if _, err := sc.conn.Write([]byte{socks5Version, want}); err != nil {
		return "", fmt.Errorf("write method selection: %w", err)
	}
	if want == methodNoAuth {
		return "", nil
	}
	name, pass, err := readUserPass(hs)
	rec.user = name
	if err != nil {
		sc.conn.Write([]byte{userPassVersion, authStatusFailed})
		return "", err
	}
	// A blocked client gets the reply of a wrong password, without the
	// bcrypt (RFC 1929 has no other failure status).
	if sc.srv.lim.guard.blocked(rec.client.Addr(), sc.st.Limits.AuthFail, time.Now()) {
		sc.st.Metrics.AuthFailure("blocked")
		sc.conn.Write([]byte{userPassVersion, authStatusFailed})
		return "", errAuthBlocked
	}
	if err := sc.st.Auth.Verify(name, pass); err != nil {
		sc.st.Metrics.AuthFailure("bad_credentials")
		// Recorded before the reply, so a client that retries at
		// once already finds itself blocked.
		sc.authFailed(rec.client.Addr())
		sc.conn.Write([]byte{userPassVersion, authStatusFailed})
		return "", err
	}
	if _, err := sc.conn.Write([]byte{userPassVersion, authStatusOK}); err != nil {
		return "", fmt.Errorf("write auth status: %w", err)
	}
	return name, nil
}

// logHandshake logs a connection that ended before a request could be
// served. A bare connect-and-close (port scans, TCP health checks) is only
// worth a debug line.
func (sc *serverConn) logHandshake(rec *record, err error) {
	lvl := zap.WarnLevel
	msg := "handshake failed"
	switch {
	case errors.Is(err, auth.ErrBadCredentials):
		msg = "authentication failed"
	case errors.Is(err, io.EOF):
		lvl = zap.DebugLevel
	case errors.Is(err, errAuthBlocked):
		// The block itself was logged once, as a warning.
		lvl = zap.DebugLevel
		msg = "authentication refused"
	}
	fields := []zap.Field{
		zap.Stringer("client", rec.client),
		sc.listenerField(),
		sc.listenerNameField(),
		zap.Duration("duration", time.Since(rec.start)),
		zap.Error(err),
	}
	if rec.user != "" {
		fields = append(fields, zap.String("user", logSafe(rec.user)))
	}
	sc.srv.log.Log(lvl, msg, fields...)
}

// listenerField and listenerNameField identify the connection's listener
// in a log line: its address always, its name when it has one.
func (sc *serverConn) listenerField() zap.Field { return zap.String("listener", sc.lisAddr) }

func (sc *serverConn) listenerNameField() zap.Field { return listenerNameField(sc.lisName) }

func (sc *serverConn) clientAddr() netip.AddrPort { return addrPortOf(sc.conn.RemoteAddr()) }

func listenerNameField(name string) zap.Field {
	if name == "" {
		return zap.Skip()
	}
	return zap.String("listener_name", name)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
