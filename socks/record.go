package socks

import (
	"errors"

	"github.com/ifsocks/ifsocks/accounting"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Flow outcomes, as logged.
const (
	outcomeOK         = "ok"             // relayed; both sides closed normally
	outcomeIdle       = "idle"           // relayed; ended by the idle timeout
	outcomeReset      = "relay_error"    // relayed; ended by an error on a side
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

// skippedField lists the egress interfaces passed over; nothing when none
// was.
func skippedField(s []string) zap.Field {
	if len(s) == 0 {
		return zap.Skip()
	}
	return zap.Strings("skipped", s)
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
	sc.st.Metrics.FlowDone(r.user, r.iface, r.outcome, r.up, r.down)
	r.log(sc.srv.log, lvl)
}

// record accumulates what the flow log line reports.
type record struct {
	start    time.Time
	client   netip.AddrPort
	user     string
	target   Addr
	remote   netip.AddrPort
	iface    string
	skipped  []string // egress interfaces passed over, with why
	local    netip.AddrPort
	up, down int64
	reply    byte
	outcome  string
	err      error
}

func (r *record) finish(rep byte, outcome string, err error) {
	r.reply = rep
	r.outcome = outcome
	r.err = err
}

// log writes the one line a flow gets at its end. Strings that came from
// the network (user, target name) go through logSafe.
func (r *record) log(l *zap.Logger, lvl zapcore.Level) {
	fields := []zap.Field{
		zap.String("user", logSafe(r.user)),
		zap.Stringer("client", r.client),
		zap.String("target", logSafe(r.target.String())),
		zap.String("interface", r.iface),
		zap.Int64("bytes_up", r.up),
		zap.Int64("bytes_down", r.down),
		zap.Duration("duration", time.Since(r.start)),
		zap.String("outcome", r.outcome),
		zap.Uint8("reply", r.reply),
	}
	if r.remote.IsValid() {
		fields = append(fields, zap.Stringer("remote", r.remote))
	}
	if r.local.IsValid() {
		fields = append(fields, zap.Stringer("local", r.local))
	}
	if len(r.skipped) > 0 {
		fields = append(fields, skippedField(r.skipped))
	}
	if r.err != nil {
		fields = append(fields, zap.Error(r.err))
	}
	l.Log(lvl, "flow", fields...)
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
