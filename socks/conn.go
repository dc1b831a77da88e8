package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/relay"
	"go.uber.org/zap"
)

// errNoMethod: the client offered no method the server accepts.
var errNoMethod = errors.New("no acceptable authentication method")

// errEvicted: the connection was closed in its handshake to make room for
// a new one (a handshake cap was reached).
var errEvicted = errors.New("closed in its handshake to make room for a new connection (handshake cap)")

// serverConn is one accepted client connection.
type serverConn struct {
	srv  *Server
	conn net.Conn // a *net.TCPConn from Serve; net.Pipe in fuzz tests
	// st are the settings in force for the connection's next step:
	// taken at accept, and taken again (refresh) when the greeting and
	// the credentials arrive and at the end of the handshake, so a
	// reload in between applies to authentication, the user's egress
	// and the destination policy. Written by the connection's own
	// goroutine only.
	st  *Settings
	lis *Listener // the listener's settings; nil for a plain Serve
	// lisKey is the listener's key in Settings.Listeners ("" for a
	// plain Serve), to find its settings again after a reload.
	lisKey string
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
	// relay is the flow's relay once started: cutting the flow closes
	// through it, since a quiet relay may have no goroutine to notice
	// its sockets closed (relay.Start).
	relay *relay.Flow
	// ans answers requests in a protocol other than SOCKS5 (nil:
	// SOCKS5); set by that protocol's serve before any flow starts.
	ans  answerer
	stop func() // cancels a paced relay's context (flowlimit.go); set once, under srv.mu
	// cancelWait ends a wait for a password check (login.go), if one is on.
	cancelWait func()

	// Handshake caps (handshakes.go): the groups holding a slot of sc
	// and its place in their lists, under srv.lim.hsMu; the state is
	// written under it and may be read without.
	hsGroups [levels]*hsGroup
	hsLinks  [levels]hsLink
	hsState  atomic.Uint32

	// Flow limits (flowlimit.go), used by the connection's own
	// goroutines only: the user's running flows once counted.
	flow     *userFlows
	flowName string
	// acct counts the flow's bytes (nil without accounting); set before
	// the flow begins, then read under srv.mu to cut flows over quota.
	acct *accounting.Counter

	// proto is the protocol the client speaks (sniff), for the auth
	// backend's request.
	proto Protocols
	// rec is the flow record of the connection's SOCKS request (an HTTP
	// connection makes one per request from it); serve's goroutine and
	// then the relay's completion write it, one after the other.
	rec record

	// remote is the auth backend's answer for the user logged in on the
	// connection; an HTTP client may log in again per request, and its
	// dials run on other goroutines, hence the atomic.
	remote atomic.Pointer[remoteUser]
}

// close closes the client connection and, if there is one, the upstream
// connection: a relay whose client has half-closed only waits on the
// upstream, so closing the client alone would not end it. Called with
// srv.mu held.
func (sc *serverConn) close() {
	if sc.stop != nil {
		sc.stop()
	}
	if sc.cancelWait != nil {
		sc.cancelWait()
	}
	if sc.relay != nil {
		sc.relay.Close()
	}
	sc.conn.Close()
	if sc.upstream != nil {
		sc.upstream.Close()
	}
}

// refresh takes the settings current now for the steps that follow.
//
// Only sc.st changes, and only in the goroutine that serves the
// connection: code that runs in other goroutines of it (the HTTP
// transport's dials) reads Server.Settings itself, never sc.st. sc.lis
// stays the listener's settings at accept for the same reason.
func (sc *serverConn) refresh() *Settings {
	st := sc.srv.settings.Load()
	if st != sc.st {
		sc.st = st
	}
	return st
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
	// The connection's record lives in sc: one allocation fewer per
	// connection, and the flow holds sc anyway until its line is written.
	sc.rec = record{start: time.Now(), client: addrPortOf(sc.conn.RemoteAddr()), listener: sc.lisAddr, listenerName: sc.lisName}
	rec := &sc.rec
	st := sc.st
	if st.HandshakeTimeout > 0 {
		sc.conn.SetDeadline(rec.start.Add(st.HandshakeTimeout))
	}
	hs := newHSReader(sc.conn)
	if sc.hsState.Load() != hsNone {
		hs.owner = sc
	}
	proto, err := sc.sniff(hs)
	sc.proto = proto
	if err != nil {
		hs.detach()
		sc.logHandshake(rec, err)
		return false
	}
	switch proto {
	case ProtoHTTP:
		return sc.serveHTTP(hs, rec)
	case ProtoSOCKS4:
		return sc.serveSOCKS4(hs, rec)
	}
	rec.protocol = protoSOCKS5
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
	user, eg, ok := sc.flowUser(rec, name)
	if !ok {
		return false
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

// refuseRemoved refuses the request of a user that a reload has removed
// since it authenticated.
func (sc *serverConn) refuseRemoved(rec *record) {
	sc.answerRefusal(RepNotAllowed, ErrUserRemoved)
	rec.finish(RepNotAllowed, outcomeRemoved, ErrUserRemoved)
	sc.logFlow(rec, zap.WarnLevel)
}

// flowUser returns the user a flow runs as (name; "" without
// authentication) and the egress it leaves by, from the settings current
// now: the end of the handshake, for every protocol. When a reload has
// removed the user since it authenticated, it refuses the flow and
// reports false.
func (sc *serverConn) flowUser(rec *record, name string) (User, *Egress, bool) {
	st := sc.refresh()
	user, ok := sc.userOf(st, name)
	if name != "" && !ok {
		sc.refuseRemoved(rec)
		return user, nil, false
	}
	eg := sc.egressOf(st, name, &user)
	return user, eg, true
}

// refuse replies rep with no bound address, and logs the flow.
func (sc *serverConn) refuse(rec *record, rep byte, outcome string, err error) {
	sc.answerRefusal(rep, err)
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
	sc.refresh() // a reload may have added or removed users since accept
	want := byte(methodNoAuth)
	if sc.needsPassword() {
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
	// "USER-session-KEY" authenticates as USER; the key only picks the
	// source address, and only its hash is ever logged.
	name, rec.session = sc.st.splitSession(sc.lis, name)
	rec.user = name
	if err != nil {
		sc.conn.Write([]byte{userPassVersion, authStatusFailed})
		return "", err
	}
	// A refused login gets the reply of a wrong password (RFC 1929 has
	// no other failure status).
	if err := sc.login(rec.client.Addr(), name, pass); err != nil {
		sc.conn.Write([]byte{userPassVersion, authStatusFailed})
		return "", err
	}
	if _, err := sc.conn.Write([]byte{userPassVersion, authStatusOK}); err != nil {
		return "", fmt.Errorf("write auth status: %w", err)
	}
	return name, nil
}

// login checks the credentials of sc's client, for every protocol that
// has them (login.go). A blocked client is refused unchecked, without the
// bcrypt; a wrong name or password counts toward the block, and is
// recorded before the caller replies, so a client that retries at once
// already finds itself blocked.
func (sc *serverConn) login(client netip.Addr, name, pass string) error {
	// The client has sent all it can: from here its handshake is not
	// evicted (unless it was a moment ago).
	if !sc.srv.hsProtect(sc) {
		return errEvicted
	}
	// Checked against the users and passwords current now: a reload
	// since accept (while the client typed) may have removed or changed
	// the user.
	sc.refresh()
	err := sc.authenticate(client, name, pass)
	if reason := authMetric(err); reason != "" {
		sc.st.Metrics.AuthFailure(reason)
	}
	return err
}

// remoteLogin checks a login of a name Users lacks against the auth
// backend, whose answer, the user's settings, it keeps for the
// connection's flows (userOf).
func (sc *serverConn) remoteLogin(ctx context.Context, client netip.Addr, name, pass string) error {
	st := sc.st
	u, err := st.Backend.Authenticate(ctx, auth.Request{User: name, Password: pass,
		Client: netip.AddrPortFrom(client, sc.clientAddr().Port()), Listener: addrPortOf(sc.conn.LocalAddr()),
		Protocol: protocolName(sc.proto)})
	if err != nil {
		return err
	}
	sc.remote.Store(&remoteUser{name: name, user: u})
	return nil
}

// protocolName names p in an auth backend's request.
func protocolName(p Protocols) string {
	switch p {
	case ProtoHTTP:
		return protoHTTP
	case ProtoSOCKS4:
		return protoSOCKS4
	}
	return protoSOCKS5
}

// remoteUser is a user the auth backend accepted on this connection.
type remoteUser struct {
	name string
	user *User
}

// userOf returns the settings of the user name, from Users or, for a user
// of the auth backend, from the answer that accepted its login on this
// connection.
// A reload that drops the backend drops its users with it.
func (sc *serverConn) userOf(st *Settings, name string) (User, bool) {
	if u, ok := st.Users[name]; ok {
		return u, true
	}
	if r := sc.remote.Load(); r != nil && r.name == name && st.Backend != nil {
		return *r.user, true
	}
	return User{}, false
}

// needsPassword reports whether sc's clients must authenticate.
func (sc *serverConn) needsPassword() bool {
	return sc.st.authenticates() && (sc.lis == nil || !sc.lis.NoAuth)
}

// logHandshake logs a connection that ended before a request could be
// served. A bare connect-and-close (port scans, TCP health checks) is only
// worth a debug line.
func (sc *serverConn) logHandshake(rec *record, err error) {
	lvl := zap.WarnLevel
	msg := "handshake failed"
	switch {
	case evictedConn(sc):
		// Counted, and logged at most once a second, by admit.
		lvl = zap.DebugLevel
		msg = "handshake evicted"
	case errors.Is(err, auth.ErrBadCredentials), errors.Is(err, auth.ErrUnavailable):
		msg = "authentication failed"
	case errors.Is(err, io.EOF), errors.Is(err, errNoFirstByte):
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
