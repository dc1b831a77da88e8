package nstest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Config renders a daemon configuration for a test: short timeouts, a
// debug JSON log, and what the test sets. The daemon's own defaults apply
// to everything else.
type Config struct {
	// Listen is [server] listen; nil leaves it out (only Extra's
	// [[listeners]] listen, or the built-in default).
	Listen []string
	// Server are more [server] lines ("key = value"), after the timeouts.
	Server []string
	// Metrics is [metrics] listen; "" leaves metrics off.
	Metrics string
	Users   []User
	// Extra is appended as it is ([[listeners]] tables, say).
	Extra string
}

// Timeouts every test configuration sets: short enough that a failing
// test ends soon, long enough for a loaded machine.
const (
	ConfigConnectTimeout  = "5s"
	ConfigShutdownTimeout = "2s"
)

// Render is the configuration as TOML.
func (c Config) Render(tb testing.TB) string {
	tb.Helper()
	var b strings.Builder
	b.WriteString("[server]\n")
	if c.Listen != nil {
		fmt.Fprintf(&b, "listen = %s\n", QuoteList(c.Listen))
	}
	fmt.Fprintf(&b, "connect_timeout = %q\nshutdown_timeout = %q\n", ConfigConnectTimeout, ConfigShutdownTimeout)
	for _, l := range c.Server {
		b.WriteString(strings.TrimRight(l, "\n") + "\n")
	}
	if c.Metrics != "" {
		fmt.Fprintf(&b, "\n[metrics]\nlisten = %q\n", c.Metrics)
	}
	b.WriteString("\n[log]\nlevel = \"debug\"\nformat = \"json\"\n")
	for _, u := range c.Users {
		b.WriteString(u.Block(tb))
	}
	b.WriteString(c.Extra)
	return b.String()
}

// Passwords are the passwords of c's users, for a check that none reaches
// a log.
func (c Config) Passwords() []string {
	var p []string
	for _, u := range c.Users {
		p = append(p, u.Password)
	}
	return p
}

// QuoteList is a TOML array of strings.
func QuoteList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
