package socks

import (
	"bytes"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// hostileNames are user names and target names a client may send to get
// raw control characters into a log: terminal escapes, forged line ends,
// bytes that cut C strings, C1 controls (U+009B is CSI on 8-bit terminals),
// bidi overrides, invalid UTF-8, and printable text that looks escaped.
var hostileNames = []string{
	"\x1b[31mred\x1b[0m",
	"line\r\nforged=1",
	"nul\x00byte",
	"bell\x07bs\x08",
	"tab\there",
	"del\x7f",
	"csi\u009b31m",
	"nel\u0085",
	"rlo\u202etxt",
	"ls\u2028ps\u2029",
	"invalid\xff\xfe",
	`back\x1bslash`,
	`"quoted"`,
}

// logEncoders are the two encoders main.go can build, with its settings.
func logEncoders() map[string]zapcore.Encoder {
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	return map[string]zapcore.Encoder{
		"console": zapcore.NewConsoleEncoder(ec),
		"json":    zapcore.NewJSONEncoder(ec),
	}
}

// startLoggedServer is startServer with a real encoder writing to memory.
func startLoggedServer(tb testing.TB, st *Settings, enc zapcore.Encoder) (addr string, logs *syncBuffer) {
	tb.Helper()
	logs = new(syncBuffer)
	srv := New(zap.New(zapcore.NewCore(enc, logs, zapcore.DebugLevel)), st)
	return serveLoopback(tb, srv), logs
}

// TestLogSafety sends hostile user names (failed logins) and target names
// (refused requests) and checks, for both encoders, that the log lines hold
// no raw control or other non-printable character, that no line is forged,
// and that the logged value still tells exactly what the client sent.
func TestLogSafety(t *testing.T) {
	for encName, enc := range logEncoders() {
		t.Run(encName, func(t *testing.T) {
			addr, logs := startLoggedServer(t, testSettings(t), enc)
			for i, name := range hostileNames {
				// A failed login logs the user name it was given.
				r := dialRaw(t, addr)
				r.send(5, 1, methodUserPass)
				r.expect(5, methodUserPass)
				r.send(bytes.Join([][]byte{{1, byte(len(name))}, []byte(name), {2}, []byte("pw")}, nil)...)
				r.expect(1, authStatusFailed)
				r.expectClosed()
				// A name that is no host name is refused, and logged.
				r = dialRaw(t, addr)
				r.login("bob", bobPass)
				if rep, _ := r.connectName(name, 80); rep != RepHostUnreachable {
					t.Fatalf("target %q: reply %#x, want %#x", name, rep, RepHostUnreachable)
				}
				r.expectClosed()
				waitFor(t, 5*time.Second, "log lines", func() bool {
					return len(logLines(t, encName, logs.Bytes())) >= 2*(i+1)
				})
			}
			lines := logLines(t, encName, logs.Bytes())
			var users, targets []string
			for _, l := range lines {
				switch l.msg {
				case "authentication failed":
					users = append(users, l.field(t, "user"))
				case "flow":
					targets = append(targets, l.field(t, "target"))
				}
			}
			if len(users) != len(hostileNames) || len(targets) != len(hostileNames) {
				t.Fatalf("%d auth failure and %d flow lines, want %d of each:\n%s", len(users), len(targets), len(hostileNames), logs.Bytes())
			}
			for i, name := range hostileNames {
				if got := unescapeLogged(t, users[i]); got != name {
					t.Errorf("user %q logged as %s, which reads back as %q", name, users[i], got)
				}
				want := net.JoinHostPort(name, "80")
				if got := unescapeLogged(t, targets[i]); got != want {
					t.Errorf("target %q logged as %s, which reads back as %q", want, targets[i], got)
				}
			}
		})
	}
}

// logLine is one decoded log line.
type logLine struct {
	msg    string
	fields map[string]any
}

func (l logLine) field(tb testing.TB, key string) string {
	tb.Helper()
	s, ok := l.fields[key].(string)
	if !ok {
		tb.Fatalf("%q line: field %s = %v, want a string", l.msg, key, l.fields[key])
	}
	return s
}

// logLines splits and decodes log output, failing on any character a
// terminal or log viewer could act on. The only control characters allowed
// are the encoders' own: a newline ending each line and, in the console
// format, a tab between time, level, message and the JSON fields, so a
// line with more than those four columns has been forged.
func logLines(tb testing.TB, format string, out []byte) []logLine {
	tb.Helper()
	if !bytes.HasSuffix(out, []byte("\n")) && len(out) > 0 {
		tb.Fatalf("log output does not end with a newline: %q", out)
	}
	var lines []logLine
	for _, raw := range strings.SplitAfter(string(out), "\n") {
		if raw == "" {
			continue
		}
		raw = strings.TrimSuffix(raw, "\n")
		obj := raw
		if format == "console" {
			cols := strings.Split(raw, "\t")
			if len(cols) != 4 {
				tb.Fatalf("console line has %d tab-separated columns, want 4: %q", len(cols), raw)
			}
			obj = cols[3]
		}
		if i := nonPrintable(obj); i >= 0 {
			tb.Fatalf("non-printable character at byte %d of log line %q", i, raw)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(obj), &fields); err != nil {
			tb.Fatalf("log line %q: %v", raw, err)
		}
		l := logLine{fields: fields}
		if format == "console" {
			l.msg = strings.Split(raw, "\t")[2]
		} else {
			l.msg, _ = fields["msg"].(string)
		}
		lines = append(lines, l)
	}
	return lines
}

// nonPrintable returns the offset of the first byte that is not part of a
// printable UTF-8 rune (unicode.IsPrint: no controls, no format
// characters such as bidi overrides, no line separators), or -1.
func nonPrintable(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || !unicode.IsPrint(r) {
			return i
		}
		i += size
	}
	return -1
}

// unescapeLogged reads a logged network string back: as it is, or as a Go
// string literal when the server had to quote it.
func unescapeLogged(tb testing.TB, v string) string {
	tb.Helper()
	if !strings.HasPrefix(v, `"`) {
		return v
	}
	s, err := strconv.Unquote(v)
	if err != nil {
		tb.Fatalf("logged value %s starts with a quote but is no Go string literal: %v", v, err)
	}
	return s
}

// TestLogSafeUnchanged: ordinary names, including IP literals and
// internationalised text, are logged exactly as sent.
func TestLogSafeUnchanged(t *testing.T) {
	for _, s := range []string{"", "alice", "example.org:443", "[2001:db8::1]:80", "Zoë", "用户", `a"b`, `c:\dir`} {
		if got := logSafe(s); got != s {
			t.Errorf("logSafe(%q) = %q, want it unchanged", s, got)
		}
	}
	for _, s := range hostileNames {
		got := logSafe(s)
		if nonPrintable(got) >= 0 || unescapeLogged(t, got) != s {
			t.Errorf("logSafe(%q) = %q, want printable text that reads back as the original", s, got)
		}
	}
}
