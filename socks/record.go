package socks

import (
	"errors"

	"github.com/ifsocks/ifsocks/accounting"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/ifsocks/ifsocks/source"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Flow outcomes, as logged.
const (
	outcomeOK         = "ok"             // relayed; both sides closed normally
	outcomeIdle       = "idle"           // relayed; ended by the idle timeout
	outcomePeerReset  = "reset"          // a client or target reset its connection, or left early
	outcomeRelayError = "relay_error"    // relayed; ended by a failure of this host's side
	outcomeDenied     = "denied"         // refused by the destination policy
	outcomeUnreach    = "unreachable"    // interface, network or host unreachable
	outcomeRefused    = "refused"        // target refused the connection
	outcomeTimeout    = "timeout"        // connect or resolution timed out
	outcomeBadRequest = "bad_request"    // malformed or unsupported request
	outcomeShutdown   = "shutdown"       // refused because the server is stopping
	outcomeLimit      = "limit"          // refused by a configured limit
	outcomeError      = "error"          // our own fault
	outcomeIfaceLost  = "interface_lost" // cut: the egress interface went down or away
	outcomeRemoved    = "user_removed"   // cut: user removed by a reload
	outcomeQuota      = "quota"          // refused or cut: the user's quota is used up
)

// relayOutcome names a flow that err ended after its success reply (or
// while the reply was sent): a peer that resets its connection — a client
// that sets SO_LINGER 0 and closes once it has read its answer, a target
// that aborts — or that is gone when we write or half-close, ends the flow
// as that peer chose, which is no failure here: outcome reset. Anything
// else is ours to look at: relay_error.
func relayOutcome(err error) string {
	if peerEnded(err) {
		return outcomePeerReset
	}
	return outcomeRelayError
}

// peerEnded reports whether err is the kernel telling that the other end
// of a socket reset or closed it: ECONNRESET on a read or write,
// ECONNABORTED, EPIPE on a write after the peer's close, ENOTCONN from a
// half-close (shutdown) of a socket already reset.
func peerEnded(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}

// cutOutcome names a flow the server ended on purpose.
func cutOutcome(reason error) string {
	switch {
	case errors.Is(reason, ErrUserRemoved):
		return outcomeRemoved
	case errors.Is(reason, ErrInterfaceLost):
		return outcomeIfaceLost
	case errors.Is(reason, accounting.ErrQuotaExceeded):
		return outcomeQuota
	}
	return outcomeShutdown
}

// logFlow counts the flow in the metrics and writes its line (in that
// order: whoever sees the line can rely on the counters).
func (sc *serverConn) logFlow(r *record, lvl zapcore.Level) {
	sc.st.Metrics.FlowDone(r.protocol, r.user, r.iface, r.outcome, r.up, r.down)
	r.log(sc.srv.log, lvl)
}

// record accumulates what the flow log line reports.
type record struct {
	protocol string // protoSOCKS5 and the others of protocols.go
	start    time.Time
	client   netip.AddrPort
	// listener and listenerName identify the listener the client came
	// in by (listenerName may be empty).
	listener, listenerName string
	user                   string
	target                 Addr
	remote                 netip.AddrPort
	iface                  string
	skipped                []string // egress interfaces passed over, with why
	// session is the session key of a "USER<sep>KEY" login: only its
	// hash is logged. rotation is the source rotation of a pool of
	// several addresses, "" otherwise.
	session  string
	rotation string
	local    netip.AddrPort
	up, down int64
	reply    byte
	outcome  string
	err      error

	// A forwarded HTTP request (protocol http) also logs its method and
	// the status the client got.
	method string
	status int
}

func (r *record) flowID() flowID { return flowID{user: r.user, session: r.session} }

// tookEgress notes how the flow's egress came out.
func (r *record) tookEgress(u egressUse) {
	r.iface = u.route.Interface
	r.skipped = u.skipped
	r.rotation = u.rotation
}

func (r *record) finish(rep byte, outcome string, err error) {
	r.reply = rep
	r.outcome = outcome
	r.err = err
}

// log writes the one line a CONNECT or BIND flow gets at its end.
func (r *record) log(l *zap.Logger, lvl zapcore.Level) {
	l.Log(lvl, "flow", r.flowFields()...)
}

// flowFields returns the fields of r's line (log).
func (r *record) flowFields() []zap.Field {
	// One slice for the whole line: every flow logs one, so its fields
	// cost one allocation, not one per group of fields.
	// Sized to the line: a zap.Field is 64 bytes, and the most a line
	// can have is half again what a CONNECT's usually has.
	n := commonFields + 2 + r.tailCount()
	if r.remote.IsValid() {
		n++
	}
	if r.local.IsValid() {
		n++
	}
	if r.method != "" {
		n += 2
	}
	fields := r.appendCommon(make([]zap.Field, 0, n))
	fields = append(fields, zap.String("target", logSafe(r.target.String())), zap.Uint8("reply", r.reply))
	// Addresses go in by pointer: a netip.AddrPort put in an interface
	// by value is an allocation; r is on the heap already and is not
	// changed once its line is written.
	if r.remote.IsValid() {
		fields = append(fields, zap.Stringer("remote", &r.remote))
	}
	if r.local.IsValid() {
		fields = append(fields, zap.Stringer("local", &r.local))
	}
	if r.method != "" {
		fields = append(fields, zap.String("method", logSafe(r.method)), zap.Int("status", r.status))
	}
	return r.appendTail(fields)
}

// write writes a flow's one line: the fields every flow has whatever its
// protocol (user, client, listener, interface, bytes each way, duration,
// outcome, a pool's rotation and session hash, the interfaces skipped,
// the error), and the protocol's own. It and log are the only writers of
// those fields (appendCommon, appendTail), so TCP and UDP lines name them
// alike. Strings that came from the network (user, target name) go
// through logSafe.
func (r *record) write(l *zap.Logger, lvl zapcore.Level, msg string, own []zap.Field) {
	fields := r.appendCommon(make([]zap.Field, 0, commonFields+len(own)+r.tailCount()))
	fields = append(fields, own...)
	l.Log(lvl, msg, r.appendTail(fields)...)
}

// commonFields is how many fields appendCommon adds.
const commonFields = 10

// tailCount is how many fields appendTail adds to r's line.
func (r *record) tailCount() int {
	n := 0
	for _, has := range [...]bool{r.rotation != "", r.session != "", len(r.skipped) > 0, r.err != nil} {
		if has {
			n++
		}
	}
	return n
}

// appendCommon appends the fields every flow line starts with.
func (r *record) appendCommon(fields []zap.Field) []zap.Field {
	return append(fields,
		zap.String("protocol", r.protocol),
		zap.String("user", logSafe(r.user)),
		zap.Stringer("client", &r.client),
		zap.String("listener", r.listener),
		listenerNameField(r.listenerName),
		zap.String("interface", r.iface),
		zap.Int64("bytes_up", r.up),
		zap.Int64("bytes_down", r.down),
		zap.Duration("duration", time.Since(r.start)),
		zap.String("outcome", r.outcome),
	)
}

// appendTail appends the fields every flow line ends with, when they
// apply.
func (r *record) appendTail(fields []zap.Field) []zap.Field {
	if r.rotation != "" {
		fields = append(fields, zap.String("rotation", r.rotation))
	}
	if r.session != "" {
		// A hash of the key, never the key: it tells a session's flows
		// apart without handing the key, which picks the address, to
		// whoever reads the log.
		fields = append(fields, zap.String("session", source.KeyHash(r.session)))
	}
	if len(r.skipped) > 0 {
		fields = append(fields, zap.Strings("skipped", r.skipped))
	}
	if r.err != nil {
		fields = append(fields, zap.Error(r.err))
	}
	return fields
}

// logSafe returns a string from the network ready for a log field: as it
// is when every rune is printable and it does not start with '"', else
// quoted as a Go string literal (strconv.Quote), which the leading quote
// tells apart. Both zap encoders escape C0 controls but pass DEL, C1
// controls (U+009B is CSI to some terminals), bidi overrides and line
// separators through, and replace invalid UTF-8, so a client could act on
// the terminal or the viewer of whoever reads the log, or hide what it sent.
func logSafe(s string) string {
	if !strings.HasPrefix(s, `"`) && utf8.ValidString(s) && strings.IndexFunc(s, notPrint) < 0 {
		return s
	}
	return strconv.Quote(s)
}

func notPrint(r rune) bool { return !strconv.IsPrint(r) }
