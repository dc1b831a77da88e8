package config_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ifsocks/ifsocks/config"
)

// fileName is the name passed to Parse; every error must carry it.
const fileName = "test.toml"

// parse parses text as a configuration file named fileName.
func parse(tb testing.TB, text string) (*config.Config, error) {
	tb.Helper()
	return config.Parse([]byte(text), fileName)
}

// mustParse parses text and fails the test on any error.
func mustParse(tb testing.TB, text string) *config.Config {
	tb.Helper()
	c, err := parse(tb, text)
	if err != nil {
		tb.Fatalf("Parse:\n%s\nerror: %v", text, err)
	}
	return c
}

// bcryptHash returns a MinCost bcrypt hash of password with its "$2a$"
// prefix replaced by prefix.
func bcryptHash(tb testing.TB, password, prefix string) string {
	tb.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		tb.Fatalf("bcrypt: %v", err)
	}
	if !strings.HasPrefix(string(h), "$2a$") {
		tb.Fatalf("bcrypt made %q, want a $2a$ hash", h)
	}
	return prefix + string(h[len("$2a$"):])
}

// userTOML is one [[users]] entry with a plaintext password.
func userTOML(name, password string) string {
	return "[[users]]\nname = " + quote(name) + "\npassword = " + quote(password) + "\n"
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&0xf])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func TestLoadExample(t *testing.T) {
	path := filepath.Join("..", "config.toml.example")
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	if c.Source != path {
		t.Errorf("Source = %q, want %q", c.Source, path)
	}
	s := c.Server
	if want := []string{"0.0.0.0:1080", "[::]:1080"}; !slices.Equal(s.Listen, want) {
		t.Errorf("Listen = %q, want %q", s.Listen, want)
	}
	durations := []struct {
		name      string
		got, want time.Duration
	}{
		{"handshake_timeout", s.HandshakeTimeout, config.DefaultHandshakeTimeout},
		{"idle_timeout", s.IdleTimeout, config.DefaultIdleTimeout},
		{"connect_timeout", s.ConnectTimeout, config.DefaultConnectTimeout},
		{"shutdown_timeout", s.ShutdownTimeout, config.DefaultShutdownTimeout},
		{"tcp_keepalive", s.TCPKeepAlive, 0},
	}
	for _, d := range durations {
		if d.got != d.want {
			t.Errorf("%s = %v, want %v (the example documents the defaults)", d.name, d.got, d.want)
		}
	}
	if !slices.Equal(s.Deny, config.DefaultDeny) {
		t.Errorf("Deny = %v, want DefaultDeny %v", s.Deny, config.DefaultDeny)
	}
	limits := []struct {
		name      string
		got, want any
	}{
		{"max_handshakes_per_ip", s.MaxHandshakesPerIP, config.DefaultMaxHandshakesPerIP},
		{"auth_fail_limit", s.AuthFailLimit, config.DefaultAuthFailLimit},
		{"auth_fail_limit_ip", s.AuthFailLimitIP, config.DefaultAuthFailLimitIPFactor * config.DefaultAuthFailLimit},
		{"max_handshakes", s.MaxHandshakes, config.MaxHandshakesFromNoFile},
		{"auth_fail_window", s.AuthFailWindow, config.DefaultAuthFailWindow},
		{"auth_fail_cooldown", s.AuthFailCooldown, config.DefaultAuthFailCooldown},
		{"max_connections", s.MaxConnections, config.DefaultMaxConnections},
	}
	for _, l := range limits {
		if l.got != l.want {
			t.Errorf("%s = %v, want %v (the example documents the defaults)", l.name, l.got, l.want)
		}
	}
	if !s.DenyOwnAddresses || s.AllowOpen {
		t.Errorf("DenyOwnAddresses, AllowOpen = %v, %v, want true, false", s.DenyOwnAddresses, s.AllowOpen)
	}
	if a := c.Accounting; a.Path != "" || a.FlushInterval != config.DefaultFlushInterval || a.OnError != config.DefaultOnError {
		t.Errorf("Accounting = %+v, want off with the default flush_interval and on_error", a)
	}
	if c.Log.Level != "info" || c.Log.Format != "json" {
		t.Errorf("Log = %+v, want info/json", c.Log)
	}
	if len(c.Users) != 2 {
		t.Fatalf("got %d users, want 2: %+v", len(c.Users), c.Users)
	}
	alice, bob := c.Users[0], c.Users[1]
	if alice.Name != "alice" || alice.Interface != "eth1" || alice.Password != "" {
		t.Errorf("users[0] = %+v, want alice on eth1 with a hash", alice)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(alice.PasswordHash), []byte("alice-password")); err != nil {
		t.Errorf("users[0] hash does not match the documented password: %v", err)
	}
	if bob.Name != "bob" || bob.Interface != "eth2" || bob.Password != "bob-password" || bob.PasswordHash != "" {
		t.Errorf("users[1] = %+v, want bob on eth2 with password bob-password", bob)
	}
	if alice.MaxConnections != 0 || alice.RateLimit != 0 || alice.RateBurst != 0 {
		t.Errorf("users[0] limits = %+v, want none", alice)
	}
	if bob.MaxConnections != 4 || bob.RateLimit != 10<<20 || bob.RateBurst != config.DefaultRateBurst(10<<20) {
		t.Errorf("users[1] limits = %+v, want 4 flows at 10 MiB/s with the default burst", bob)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.toml")
	c, err := config.Load(path)
	if err == nil {
		t.Fatalf("Load(%s) = %+v, want an error", path, c)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap os.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file %s", err, path)
	}
}

func TestLoadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("[log]\nlevel = \"debug\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Source != path || c.Log.Level != "debug" {
		t.Errorf("Source, Log.Level = %q, %q, want %q, debug", c.Source, c.Log.Level, path)
	}
}

func TestDefault(t *testing.T) {
	c := config.Default()
	want := &config.Config{
		Source: "built-in default",
		Server: config.Server{
			Listen:           []string{"127.0.0.1:1080"},
			HandshakeTimeout: 10 * time.Second,
			IdleTimeout:      5 * time.Minute,
			ConnectTimeout:   10 * time.Second,
			ShutdownTimeout:  30 * time.Second,
			Deny:             config.DefaultDeny,
			DenyOwnAddresses: true,

			MaxHandshakesPerIP: 128,
			MaxHandshakes:      config.MaxHandshakesFromNoFile,
			AuthFailLimit:      10,
			AuthFailLimitIP:    50,
			AuthFailWindow:     time.Minute,
			AuthFailCooldown:   5 * time.Minute,
		},
		Log: config.Log{Level: "info", Format: "json"},
	}
	if !equalConfig(c, want) {
		t.Errorf("Default() = %+v\nwant %+v", c, want)
	}
	if len(c.Users) != 0 {
		t.Errorf("Default() has users: %+v", c.Users)
	}
	// An empty file means the same as no file.
	e := mustParse(t, "")
	e.Source = want.Source
	if !equalConfig(e, want) {
		t.Errorf("Parse(\"\") = %+v\nwant %+v", e, want)
	}
}

func equalConfig(a, b *config.Config) bool {
	return a.Source == b.Source &&
		slices.Equal(a.Server.Listen, b.Server.Listen) &&
		a.Server.HandshakeTimeout == b.Server.HandshakeTimeout &&
		a.Server.IdleTimeout == b.Server.IdleTimeout &&
		a.Server.ConnectTimeout == b.Server.ConnectTimeout &&
		a.Server.ShutdownTimeout == b.Server.ShutdownTimeout &&
		slices.Equal(a.Server.Deny, b.Server.Deny) &&
		a.Server.DenyOwnAddresses == b.Server.DenyOwnAddresses &&
		a.Server.AllowOpen == b.Server.AllowOpen &&
		a.Server.MaxHandshakesPerIP == b.Server.MaxHandshakesPerIP &&
		a.Server.AuthFailLimit == b.Server.AuthFailLimit &&
		a.Server.AuthFailLimitIP == b.Server.AuthFailLimitIP &&
		a.Server.MaxHandshakes == b.Server.MaxHandshakes &&
		a.Server.AuthFailWindow == b.Server.AuthFailWindow &&
		a.Server.AuthFailCooldown == b.Server.AuthFailCooldown &&
		a.Server.MaxConnections == b.Server.MaxConnections &&
		a.Log == b.Log &&
		reflect.DeepEqual(a.Users, b.Users) &&
		reflect.DeepEqual(a.Listeners, b.Listeners)
}

func TestParseValid(t *testing.T) {
	hashA := bcryptHash(t, "pw-a", "$2a$")
	hashB := bcryptHash(t, "pw-b", "$2b$")
	hashY := bcryptHash(t, "pw-y", "$2y$")
	name255 := strings.Repeat("n", 255)

	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, c *config.Config)
	}{
		{
			name: "idle and shutdown timeouts may be zero",
			text: "[server]\nidle_timeout = \"0s\"\nshutdown_timeout = \"0s\"\n",
			check: func(t *testing.T, c *config.Config) {
				if c.Server.IdleTimeout != 0 || c.Server.ShutdownTimeout != 0 {
					t.Errorf("IdleTimeout, ShutdownTimeout = %v, %v, want 0, 0", c.Server.IdleTimeout, c.Server.ShutdownTimeout)
				}
			},
		},
		{
			name: "durations are parsed",
			text: "[server]\nhandshake_timeout = \"1500ms\"\nidle_timeout = \"1h\"\nconnect_timeout = \"3s\"\nshutdown_timeout = \"1m30s\"\ntcp_keepalive = \"45s\"\n",
			check: func(t *testing.T, c *config.Config) {
				s := c.Server
				got := []time.Duration{s.HandshakeTimeout, s.IdleTimeout, s.ConnectTimeout, s.ShutdownTimeout, s.TCPKeepAlive}
				want := []time.Duration{1500 * time.Millisecond, time.Hour, 3 * time.Second, 90 * time.Second, 45 * time.Second}
				if !slices.Equal(got, want) {
					t.Errorf("durations = %v, want %v", got, want)
				}
			},
		},
		{
			name: "bare IPs in deny become /32 and /128",
			text: "[server]\ndeny = [\"192.0.2.7\", \"2001:db8::7\", \"10.0.0.0/8\"]\n",
			check: func(t *testing.T, c *config.Config) {
				want := []netip.Prefix{
					netip.MustParsePrefix("192.0.2.7/32"),
					netip.MustParsePrefix("2001:db8::7/128"),
					netip.MustParsePrefix("10.0.0.0/8"),
				}
				if !slices.Equal(c.Server.Deny, want) {
					t.Errorf("Deny = %v, want %v", c.Server.Deny, want)
				}
			},
		},
		{
			// The policy judges ::ffff:10.99.0.2 as 10.99.0.2, so a
			// mapped entry kept as written would never match.
			name: "IPv4-mapped deny entries become IPv4",
			text: "[server]\ndeny = [\"::ffff:10.99.0.2\", \"::ffff:0:0/96\", \"::ffff:192.0.2.0/120\", \"64:ff9b::/96\"]\n",
			check: func(t *testing.T, c *config.Config) {
				want := []netip.Prefix{
					netip.MustParsePrefix("10.99.0.2/32"),
					netip.MustParsePrefix("0.0.0.0/0"),
					netip.MustParsePrefix("192.0.2.0/24"),
					netip.MustParsePrefix("64:ff9b::/96"),
				}
				if !slices.Equal(c.Server.Deny, want) {
					t.Errorf("Deny = %v, want %v", c.Server.Deny, want)
				}
			},
		},
		{
			name: "udp_require_port",
			text: "[server]\nudp_require_port = true\n",
			check: func(t *testing.T, c *config.Config) {
				if !c.Server.UDPRequirePort {
					t.Errorf("UDPRequirePort = false, want true")
				}
			},
		},
		{
			name: "empty deny replaces the default list",
			text: "[server]\ndeny = []\ndeny_own_addresses = false\n",
			check: func(t *testing.T, c *config.Config) {
				if len(c.Server.Deny) != 0 || c.Server.DenyOwnAddresses {
					t.Errorf("Deny, DenyOwnAddresses = %v, %v, want [], false", c.Server.Deny, c.Server.DenyOwnAddresses)
				}
			},
		},
		{
			name: "bcrypt prefixes 2a 2b 2y are accepted",
			text: "[server]\nlisten = [\"0.0.0.0:1080\"]\n" +
				"[[users]]\nname = \"a\"\npassword_hash = " + quote(hashA) + "\n" +
				"[[users]]\nname = \"b\"\npassword_hash = " + quote(hashB) + "\n" +
				"[[users]]\nname = \"y\"\npassword_hash = " + quote(hashY) + "\n",
			check: func(t *testing.T, c *config.Config) {
				var got []string
				for _, u := range c.Users {
					got = append(got, u.PasswordHash)
				}
				if want := []string{hashA, hashB, hashY}; !slices.Equal(got, want) {
					t.Errorf("hashes = %q, want %q", got, want)
				}
			},
		},
		{
			name: "user fields are kept",
			text: "[[users]]\nname = \"alice\"\npassword = \"pw\"\ninterface = \"eth1\"\n" +
				"[[users]]\nname = \"bob\"\npassword_hash = " + quote(hashB) + "\n",
			check: func(t *testing.T, c *config.Config) {
				want := []config.User{
					{Name: "alice", Password: "pw", Egress: config.Egress{Interface: "eth1"}},
					{Name: "bob", PasswordHash: hashB},
				}
				if !reflect.DeepEqual(c.Users, want) {
					t.Errorf("Users = %+v, want %+v", c.Users, want)
				}
			},
		},
		{
			name: "names differing only in case are different users",
			text: userTOML("carol", "pw1") + userTOML("Carol", "pw2"),
			check: func(t *testing.T, c *config.Config) {
				if len(c.Users) != 2 {
					t.Errorf("got %d users, want 2", len(c.Users))
				}
			},
		},
		{
			name: "255-byte name and 15-byte interface are accepted",
			text: "[[users]]\nname = " + quote(name255) + "\npassword = \"pw\"\ninterface = \"abcdefghijklmno\"\n",
			check: func(t *testing.T, c *config.Config) {
				if c.Users[0].Name != name255 || c.Users[0].Interface != "abcdefghijklmno" {
					t.Errorf("user = %+v", c.Users[0])
				}
			},
		},
		{
			name: "no users on loopback addresses",
			text: "[server]\nlisten = [\"127.0.0.1:1080\", \"127.0.0.2:1081\", \"[::1]:1080\"]\n",
			check: func(t *testing.T, c *config.Config) {
				if len(c.Server.Listen) != 3 || len(c.Users) != 0 {
					t.Errorf("Listen, Users = %v, %v", c.Server.Listen, c.Users)
				}
			},
		},
		{
			name: "no users on a public address with allow_open",
			text: "[server]\nlisten = [\"0.0.0.0:1080\", \":1081\"]\nallow_open = true\n",
			check: func(t *testing.T, c *config.Config) {
				if !c.Server.AllowOpen {
					t.Errorf("AllowOpen = false")
				}
			},
		},
		{
			name: "users on a public address",
			text: "[server]\nlisten = [\"0.0.0.0:1080\", \"[::]:1080\", \":1081\"]\n" + userTOML("alice", "pw"),
			check: func(t *testing.T, c *config.Config) {
				if len(c.Server.Listen) != 3 {
					t.Errorf("Listen = %v", c.Server.Listen)
				}
			},
		},
		{
			name: "log level and format",
			text: "[log]\nlevel = \"warn\"\nformat = \"console\"\n",
			check: func(t *testing.T, c *config.Config) {
				if c.Log != (config.Log{Level: "warn", Format: "console"}) {
					t.Errorf("Log = %+v", c.Log)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.text)
			if c.Source != fileName {
				t.Errorf("Source = %q, want %q", c.Source, fileName)
			}
			tt.check(t, c)
		})
	}
}

// TestParseErrors has one case per class of error. want lists substrings
// the message must hold (the key path and the bad value at least); key, if
// set, is the Key of the *config.Error the validator must return; secret,
// if set, must not leak into the message.
func TestParseErrors(t *testing.T) {
	hash := bcryptHash(t, "pw", "$2a$")
	long := strings.Repeat("u", 256)
	secret := "Zq9#xK7!mW2$"
	longSecret := strings.Repeat("Kq7#", 64) // 256 bytes

	tests := []struct {
		name   string
		text   string
		want   []string
		key    string
		secret string
	}{
		// Strict decoding.
		{
			name: "unknown top-level key",
			text: "colour = \"red\"\n",
			want: []string{"unknown key", "colour"},
		},
		{
			name: "unknown table",
			text: "[logging]\nlevel = \"info\"\n",
			want: []string{"unknown key", "logging"},
		},
		{
			name: "unknown key in server",
			text: "[server]\nlisten_addr = [\"127.0.0.1:1080\"]\n",
			want: []string{"unknown key", "server.listen_addr"},
		},
		{
			name: "unknown key in second user",
			text: userTOML("alice", "pw") + userTOML("bob", "pw") + "iface = \"eth0\"\n",
			want: []string{"unknown key", "users[1].iface"},
		},
		{
			// TOML keys are case-sensitive, but the decoder matches struct
			// fields case-insensitively: "Deny" must not be silently dropped
			// (the default deny list would be used instead).
			name: "server key with wrong case",
			text: "[server]\nDeny = [\"10.0.0.0/8\"]\n",
			want: []string{"server.Deny"},
		},
		{
			name: "log key with wrong case",
			text: "[log]\nLevel = \"verbose\"\n",
			want: []string{"log.Level"},
		},
		{
			name: "wrong TOML type for a string",
			text: "[server]\nhandshake_timeout = 10\n",
			want: []string{"server.handshake_timeout", "int64"},
		},
		{
			name: "wrong TOML type for a list",
			text: "[server]\nlisten = \"127.0.0.1:1080\"\n",
			want: []string{"server.listen", "string"},
		},
		{
			name: "not TOML",
			text: "[server\n",
			want: []string{"toml:", "line"},
		},

		// Durations.
		{
			name: "duration without unit",
			text: "[server]\nhandshake_timeout = \"10\"\n",
			want: []string{"server.handshake_timeout", `"10"`, "not a duration"},
			key:  "server.handshake_timeout",
		},
		{
			name: "negative duration",
			text: "[server]\nconnect_timeout = \"-1s\"\n",
			want: []string{"server.connect_timeout", `"-1s"`, "greater than zero"},
			key:  "server.connect_timeout",
		},
		{
			name: "zero handshake timeout",
			text: "[server]\nhandshake_timeout = \"0s\"\n",
			want: []string{"server.handshake_timeout", `"0s"`, "greater than zero"},
			key:  "server.handshake_timeout",
		},
		{
			name: "negative keepalive",
			text: "[server]\ntcp_keepalive = \"-15s\"\n",
			want: []string{"server.tcp_keepalive", `"-15s"`, "greater than zero"},
			key:  "server.tcp_keepalive",
		},
		{
			name: "keepalive in fractions of a second",
			text: "[server]\ntcp_keepalive = \"1500ms\"\n",
			want: []string{"server.tcp_keepalive", `"1500ms"`, "whole seconds"},
			key:  "server.tcp_keepalive",
		},
		{
			name: "keepalive beyond the kernel's limit",
			text: "[server]\ntcp_keepalive = \"10h\"\n",
			want: []string{"server.tcp_keepalive", `"10h"`, "at most 9h6m7s"},
			key:  "server.tcp_keepalive",
		},
		{
			name: "negative idle timeout",
			text: "[server]\nidle_timeout = \"-5m\"\n",
			want: []string{"server.idle_timeout", `"-5m"`},
			key:  "server.idle_timeout",
		},

		// Deny list.
		{
			name: "bad CIDR in deny",
			text: "[server]\ndeny = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
			want: []string{"server.deny[1]", `"10.0.0.0/33"`, "not a CIDR"},
			key:  "server.deny[1]",
		},
		{
			name: "not an address in deny",
			text: "[server]\ndeny = [\"metadata.internal\"]\n",
			want: []string{"server.deny[0]", `"metadata.internal"`},
			key:  "server.deny[0]",
		},
		{
			name: "CIDR with host bits set",
			text: "[server]\ndeny = [\"10.1.2.3/8\"]\n",
			want: []string{"server.deny[0]", `"10.1.2.3/8"`, "host bits", "10.0.0.0/8"},
			key:  "server.deny[0]",
		},

		// Users.
		{
			name: "duplicate user name",
			text: userTOML("alice", "pw1") + userTOML("alice", "pw2"),
			want: []string{"users[1].name", `"alice"`, "duplicate of users[0]"},
			key:  "users[1].name",
		},
		{
			name: "missing user name",
			text: "[[users]]\npassword = \"pw\"\n",
			want: []string{"users[0].name", `""`},
			key:  "users[0].name",
		},
		{
			name: "missing password",
			text: "[[users]]\nname = \"alice\"\ninterface = \"eth1\"\n",
			want: []string{"users[0].password_hash", `""`, "password"},
			key:  "users[0].password_hash",
		},
		{
			name:   "password and password_hash both set",
			text:   "[[users]]\nname = \"alice\"\npassword = " + quote(secret) + "\npassword_hash = " + quote(hash) + "\n",
			want:   []string{"users[0].password", "only one"},
			key:    "users[0].password",
			secret: secret,
		},
		{
			name:   "password longer than 255 bytes",
			text:   userTOML("alice", longSecret),
			want:   []string{"users[0].password", "255"},
			key:    "users[0].password",
			secret: longSecret,
		},
		{
			name: "password_hash is not a hash",
			text: "[[users]]\nname = \"alice\"\npassword_hash = \"hunter22hunter22\"\n",
			want: []string{"users[0].password_hash", "hunter2", "bcrypt"},
			key:  "users[0].password_hash",
		},
		{
			name: "password_hash is md5-crypt",
			text: "[[users]]\nname = \"alice\"\npassword_hash = \"$1$saltsalt$qjXMvbEw8oaL.CzflDugX/\"\n",
			want: []string{"users[0].password_hash", "$1$salt", "bcrypt"},
			key:  "users[0].password_hash",
		},
		{
			name: "password_hash has unknown bcrypt variant",
			text: "[[users]]\nname = \"alice\"\npassword_hash = " + quote("$2x$"+hash[4:]) + "\n",
			want: []string{"users[0].password_hash", "$2x$04$", "bcrypt"},
			key:  "users[0].password_hash",
		},
		{
			name: "password_hash truncated",
			text: "[[users]]\nname = \"alice\"\npassword_hash = " + quote(hash[:40]) + "\n",
			want: []string{"users[0].password_hash", "$2a$04$", "not a valid bcrypt hash"},
			key:  "users[0].password_hash",
		},
		{
			name: "password_hash cost out of range",
			text: "[[users]]\nname = \"alice\"\npassword_hash = " + quote("$2a$32$"+hash[7:]) + "\n",
			want: []string{"users[0].password_hash", "$2a$32$", "not a valid bcrypt hash"},
			key:  "users[0].password_hash",
		},
		{
			// bcrypt.Cost only reads the version and cost, so a hash
			// whose salt and digest are not bcrypt's base64 passes it;
			// such a user can never log in.
			name: "password_hash with characters outside bcrypt base64",
			text: "[[users]]\nname = \"alice\"\npassword_hash = " + quote(hash[:7]+strings.Repeat("!", 53)) + "\n",
			want: []string{"users[0].password_hash", "$2a$04$", "bcrypt"},
			key:  "users[0].password_hash",
		},
		{
			name: "user name longer than 255 bytes",
			text: userTOML(long, "pw"),
			want: []string{"users[0].name", long[:32], "255"},
			key:  "users[0].name",
		},
		{
			name: "interface name of 16 bytes",
			text: userTOML("alice", "pw") + "interface = \"abcdefghijklmnop\"\n",
			want: []string{"users[0].interface", `"abcdefghijklmnop"`, "15"},
			key:  "users[0].interface",
		},
		{
			name: "interface name with slash",
			text: userTOML("alice", "pw") + userTOML("bob", "pw") + "interface = \"eth/1\"\n",
			want: []string{"users[1].interface", `"eth/1"`},
			key:  "users[1].interface",
		},
		{
			name: "interface name with space",
			text: userTOML("alice", "pw") + "interface = \"eth 1\"\n",
			want: []string{"users[0].interface", `"eth 1"`},
			key:  "users[0].interface",
		},
		{
			name: "interface name with colon",
			text: userTOML("alice", "pw") + "interface = \"eth0:1\"\n",
			want: []string{"users[0].interface", `"eth0:1"`},
			key:  "users[0].interface",
		},
		{
			name: "interface name dot-dot",
			text: userTOML("alice", "pw") + "interface = \"..\"\n",
			want: []string{"users[0].interface", `".."`},
			key:  "users[0].interface",
		},

		// Listen addresses.
		{
			name: "listen address without port",
			text: "[server]\nlisten = [\"127.0.0.1\"]\n",
			want: []string{"server.listen[0]", `"127.0.0.1"`, "host:port"},
			key:  "server.listen[0]",
		},
		{
			name: "listen port zero",
			text: "[server]\nlisten = [\"127.0.0.1:0\"]\n",
			want: []string{"server.listen[0]", `"127.0.0.1:0"`, "port"},
			key:  "server.listen[0]",
		},
		{
			name: "listen port too large",
			text: "[server]\nlisten = [\"127.0.0.1:65536\"]\n",
			want: []string{"server.listen[0]", `"127.0.0.1:65536"`, "port"},
			key:  "server.listen[0]",
		},
		{
			name: "listen on a host name",
			text: "[server]\nlisten = [\"localhost:1080\"]\n",
			want: []string{"server.listen[0]", `"localhost:1080"`, "IP address"},
			key:  "server.listen[0]",
		},
		{
			name: "listen address twice",
			text: "[server]\nlisten = [\"127.0.0.1:1080\", \"127.0.0.1:1080\"]\n",
			want: []string{"server.listen[1]", `"127.0.0.1:1080"`, "same address as server.listen[0]"},
			key:  "server.listen[1]",
		},
		{
			name: "listen address twice in two spellings",
			text: "[server]\nlisten = [\"[fd31:0::1]:1080\", \"[fd31::1]:1080\"]\n",
			want: []string{"server.listen[1]", `"[fd31::1]:1080"`, "same address as server.listen[0]"},
			key:  "server.listen[1]",
		},
		{
			name: "empty listen list",
			text: "[server]\nlisten = []\n",
			want: []string{"server.listen", "at least one"},
			key:  "server.listen",
		},

		// Log.
		{
			name: "invalid log level",
			text: "[log]\nlevel = \"verbose\"\n",
			want: []string{"log.level", `"verbose"`},
			key:  "log.level",
		},
		{
			name: "invalid log format",
			text: "[log]\nformat = \"text\"\n",
			want: []string{"log.format", `"text"`},
			key:  "log.format",
		},

		// Open relay.
		{
			name: "no users on a public address",
			text: "[server]\nlisten = [\"0.0.0.0:1080\"]\n",
			want: []string{"server.listen[0]", `"0.0.0.0:1080"`, "allow_open"},
			key:  "server.listen[0]",
		},
		{
			name: "no users on all addresses",
			text: "[server]\nlisten = [\"127.0.0.1:1080\", \":1081\"]\n",
			want: []string{"server.listen[1]", `":1081"`, "allow_open"},
			key:  "server.listen[1]",
		},
		{
			name: "no users on IPv6 any with allow_open false",
			text: "[server]\nlisten = [\"[::]:1080\"]\nallow_open = false\n",
			want: []string{"server.listen[0]", `"[::]:1080"`, "allow_open"},
			key:  "server.listen[0]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err == nil {
				t.Fatalf("Parse:\n%s\n= %+v, want an error", tt.text, c)
			}
			if c != nil {
				t.Errorf("Parse returned a config with the error: %+v", c)
			}
			msg := err.Error()
			for _, w := range append([]string{fileName}, tt.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if tt.key != "" {
				var ce *config.Error
				if !errors.As(err, &ce) {
					t.Errorf("error %v holds no *config.Error", err)
				} else if ce.Key != tt.key {
					t.Errorf("config.Error.Key = %q, want %q", ce.Key, tt.key)
				}
			}
			if tt.secret != "" {
				if leak := leakedPart(msg, tt.secret); leak != "" {
					t.Errorf("error %q leaks %q of the password", msg, leak)
				}
			}
		})
	}
}

// leakedPart returns a 4-byte piece of secret found in msg, or "". Four
// bytes is already a large share of a typical password.
func leakedPart(msg, secret string) string {
	for i := 0; i+4 <= len(secret); i++ {
		if strings.Contains(msg, secret[i:i+4]) {
			return secret[i : i+4]
		}
	}
	return ""
}

// TestUnknownKeyOnlyInItsEntry checks that an unknown key is reported for
// the [[users]] entry that has it and not for the others.
func TestUnknownKeyOnlyInItsEntry(t *testing.T) {
	text := userTOML("a", "pw") + userTOML("b", "pw") + "colour = \"red\"\n" + userTOML("c", "pw")
	_, err := parse(t, text)
	if err == nil {
		t.Fatal("Parse accepted an unknown key")
	}
	msg := err.Error()
	if !strings.Contains(msg, "users[1].colour") {
		t.Errorf("error %q does not name users[1].colour", msg)
	}
	for _, wrong := range []string{"users[0].colour", "users[2].colour"} {
		if strings.Contains(msg, wrong) {
			t.Errorf("error %q names %s, which has no such key", msg, wrong)
		}
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	text := `
[server]
listen = ["localhost:1080"]
handshake_timeout = "10"
deny = ["10.0.0.1/8"]

[log]
level = "loud"

[[users]]
name = "alice"

[[users]]
name = "bob"
password = "pw"
interface = "eth/0"
`
	_, err := parse(t, text)
	if err == nil {
		t.Fatal("Parse accepted a file with five errors")
	}
	want := []string{
		`server.listen[0]: "localhost:1080"`,
		`server.handshake_timeout: "10"`,
		`server.deny[0]: "10.0.0.1/8"`,
		`log.level: "loud"`,
		`users[0].password_hash: ""`,
		`users[1].interface: "eth/0"`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not contain %q:\n%s", w, msg)
		}
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %T does not join several errors", err)
	}
	if n := len(joined.Unwrap()); n != len(want) {
		t.Errorf("got %d errors, want %d:\n%s", n, len(want), msg)
	}
	for _, e := range joined.Unwrap() {
		var ce *config.Error
		if !errors.As(e, &ce) {
			t.Errorf("%v holds no *config.Error", e)
		}
		if !strings.HasPrefix(e.Error(), fileName+": ") {
			t.Errorf("%q does not start with the file name", e)
		}
	}
}

// TestListenCanonical: listen addresses are stored in one spelling, so a
// reload that only respells one keeps the same listener.
func TestListenCanonical(t *testing.T) {
	tests := []struct{ in, want string }{
		{"[fd31:0::1]:1080", "[fd31::1]:1080"},
		{"[::ffff:127.0.0.1]:1080", "127.0.0.1:1080"},
		{"127.0.0.1:01080", "127.0.0.1:1080"},
		{":1080", ":1080"},
		{"[::]:1080", "[::]:1080"},
	}
	for _, tt := range tests {
		c, err := config.Parse([]byte(fmt.Sprintf("[server]\nlisten = [%q]\nallow_open = true\n", tt.in)), "t.toml")
		if err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		if got := c.Server.Listen[0]; got != tt.want {
			t.Errorf("listen %q stored as %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestUnknownKeySuggestion: a misspelled key is answered with the nearest
// known key of its table; a key near nothing gets no guess.
func TestUnknownKeySuggestion(t *testing.T) {
	for _, tt := range []struct {
		name, text, want, not string
	}{
		{"server key", "[server]\nlisen = [\"127.0.0.1:1080\"]\n", "server.lisen (did you mean listen?)", ""},
		{"wrong case", "[log]\nLevel = \"info\"\n", "log.Level (did you mean level?)", ""},
		{"user key", userTOML("alice", "pw") + "interfce = \"eth0\"\n", "users[0].interfce (did you mean interface?)", ""},
		{"table", "[metric]\nlisten = \"127.0.0.1:9810\"\n", "metric (did you mean metrics?)", ""},
		{"nothing near", "[server]\nbogus_key = 1\n", "server.bogus_key", "did you mean"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text)
			if err == nil {
				t.Fatal("Parse accepted an unknown key")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("error %q, want no %q", err, tt.not)
			}
		})
	}
}
