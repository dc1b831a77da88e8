package nstest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Config renders a daemon configuration for a test: short timeouts, a
// JSON log, and what the test sets. The daemon's own defaults apply to
// everything else.
type Config struct {
	// Listen is [server] listen; nil leaves it out (only Extra's
	// [[listeners]] listen, or the built-in default).
	Listen []string
	// Server are more [server] lines ("key = value", or any text, such as
	// a bad key on purpose). A key set here replaces the test default of
	// ServerDefaults.
	Server []string
	// Metrics is [metrics] listen; "" leaves metrics off.
	Metrics string
	// LogLevel is [log] level; "" is "debug".
	LogLevel string
	Users    []User
	// Extra is appended as it is ([[listeners]] tables, say).
	Extra string
}

// ServerDefaults are the [server] lines every test configuration has
// unless Config.Server sets the key: short enough that a failing test
// ends soon, long enough for a loaded machine.
var ServerDefaults = []string{
	`handshake_timeout = "10s"`,
	`idle_timeout = "5m"`,
	`connect_timeout = "5s"`,
	`shutdown_timeout = "2s"`,
}

// Render is the configuration as TOML.
func (c Config) Render(tb testing.TB) string {
	tb.Helper()
	text, err := c.Text()
	if err != nil {
		tb.Fatal(err)
	}
	return text
}

// Text is Render returning the error (of hashing a password).
func (c Config) Text() (string, error) {
	var b strings.Builder
	b.WriteString("[server]\n")
	if c.Listen != nil {
		fmt.Fprintf(&b, "listen = %s\n", QuoteList(c.Listen))
	}
	set := map[string]bool{}
	for _, l := range c.Server {
		if k, _, ok := strings.Cut(l, "="); ok {
			set[strings.TrimSpace(k)] = true
		}
	}
	for _, l := range ServerDefaults {
		if k, _, _ := strings.Cut(l, "="); !set[strings.TrimSpace(k)] {
			b.WriteString(l + "\n")
		}
	}
	for _, l := range c.Server {
		b.WriteString(strings.TrimRight(l, "\n") + "\n")
	}
	if c.Metrics != "" {
		fmt.Fprintf(&b, "\n[metrics]\nlisten = %q\n", c.Metrics)
	}
	level := c.LogLevel
	if level == "" {
		level = "debug"
	}
	fmt.Fprintf(&b, "\n[log]\nlevel = %q\nformat = \"json\"\n", level)
	for _, u := range c.Users {
		block, err := u.Text()
		if err != nil {
			return "", err
		}
		b.WriteString(block)
	}
	b.WriteString(c.Extra)
	return b.String(), nil
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
