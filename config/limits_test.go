package config_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
)

func TestParseLimits(t *testing.T) {
	user := func(name, extra string) string { return userTOML(name, "pw") + extra }
	// userLimits lists each user's max_connections, rate_limit, rate_burst.
	userLimits := func(c *config.Config) []int64 {
		var out []int64
		for _, u := range c.Users {
			out = append(out, int64(u.MaxConnections), u.RateLimit, u.RateBurst)
		}
		return out
	}
	tests := []struct {
		name string
		text string
		got  func(c *config.Config) any
		want any
	}{
		{
			name: "server limits",
			text: "[server]\nmax_handshakes_per_ip = 5\nauth_fail_limit = 3\nauth_fail_window = \"30s\"\n" +
				"auth_fail_cooldown = \"1h\"\nmax_connections = 1000\n",
			got: func(c *config.Config) any {
				s := c.Server
				return []any{s.MaxHandshakesPerIP, s.AuthFailLimit, s.AuthFailWindow, s.AuthFailCooldown, s.MaxConnections}
			},
			want: []any{5, 3, 30 * time.Second, time.Hour, 1000},
		},
		{
			name: "zero disables",
			text: "[server]\nmax_handshakes_per_ip = 0\nmax_handshakes = 0\nauth_fail_limit = 0\nauth_fail_limit_ip = 0\nmax_connections = 0\n",
			got: func(c *config.Config) any {
				s := c.Server
				return []int{s.MaxHandshakesPerIP, s.MaxHandshakes, s.AuthFailLimit, s.AuthFailLimitIP, s.MaxConnections}
			},
			want: []int{0, 0, 0, 0, 0},
		},
		{
			name: "auth_fail_limit_ip defaults to 5 x auth_fail_limit",
			text: "[server]\nauth_fail_limit = 3\n",
			got:  func(c *config.Config) any { return []int{c.Server.AuthFailLimit, c.Server.AuthFailLimitIP} },
			want: []int{3, 15},
		},
		{
			name: "auth_fail_limit_ip and max_handshakes set",
			text: "[server]\nauth_fail_limit = 3\nauth_fail_limit_ip = 7\nmax_handshakes = 5000\n",
			got: func(c *config.Config) any {
				return []int{c.Server.AuthFailLimit, c.Server.AuthFailLimitIP, c.Server.MaxHandshakes}
			},
			want: []int{3, 7, 5000},
		},
		{
			name: "integer rate, default burst at its minimum",
			text: user("u", "rate_limit = 100000\nmax_connections = 3\n"),
			got:  func(c *config.Config) any { return userLimits(c) },
			want: []int64{3, 100000, config.DefaultRateBurstMin},
		},
		{
			name: "large rate, default burst is 100 ms of it",
			text: user("u", "rate_limit = \"100MB\"\n"),
			got:  func(c *config.Config) any { return userLimits(c) },
			want: []int64{0, 100e6, 10e6},
		},
		{
			name: "units",
			text: user("a", "rate_limit = \"3KiB\"\nrate_burst = \"2MiB\"\n") +
				user("b", "rate_limit = \"5kB\"\nrate_burst = \"1GiB\"\n") +
				user("c", "rate_limit = \"2000\"\nrate_burst = \"70000B\"\n") +
				user("d", "rate_limit = \"1GB\"\nrate_burst = \"9KB\"\n"),
			got:  func(c *config.Config) any { return userLimits(c) },
			want: []int64{0, 3 << 10, 2 << 20, 0, 5000, 1 << 30, 0, 2000, 70000, 0, 1e9, 9000},
		},
		{
			name: "zero rate is unlimited",
			text: user("u", "rate_limit = 0\n"),
			got:  func(c *config.Config) any { return userLimits(c) },
			want: []int64{0, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.got(mustParse(t, tt.text)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseLimitErrors(t *testing.T) {
	user := func(extra string) string { return userTOML("u", "pw") + extra }
	tests := []struct {
		name string
		text string
		key  string
		want []string
	}{
		{"negative handshakes per IP", "[server]\nmax_handshakes_per_ip = -1\n", "server.max_handshakes_per_ip", []string{`"-1"`, "0 (no limit) or more"}},
		{"negative auth fail limit", "[server]\nauth_fail_limit = -3\n", "server.auth_fail_limit", []string{`"-3"`}},
		{"negative auth fail limit per IP", "[server]\nauth_fail_limit_ip = -1\n", "server.auth_fail_limit_ip", []string{`"-1"`}},
		{"negative max handshakes", "[server]\nmax_handshakes = -1\n", "server.max_handshakes", []string{`"-1"`, "0 (no limit) or more"}},
		{"negative max connections", "[server]\nmax_connections = -1\n", "server.max_connections", []string{`"-1"`}},
		{"zero window", "[server]\nauth_fail_window = \"0s\"\n", "server.auth_fail_window", []string{`"0s"`, "greater than zero"}},
		{"cooldown without unit", "[server]\nauth_fail_cooldown = \"300\"\n", "server.auth_fail_cooldown", []string{`"300"`, "not a duration"}},
		{"negative user max connections", user("max_connections = -2\n"), "users[0].max_connections", []string{`"-2"`}},
		{"rate with a space", user("rate_limit = \"10 MiB\"\n"), "users[0].rate_limit", []string{`"10 MiB"`, "bytes per second", "MiB"}},
		{"rate with unknown unit", user("rate_limit = \"10Mbit\"\n"), "users[0].rate_limit", []string{`"10Mbit"`}},
		{"rate in lower case", user("rate_limit = \"10mib\"\n"), "users[0].rate_limit", []string{`"10mib"`}},
		{"rate as float", user("rate_limit = 1.5e6\n"), "users[0].rate_limit", []string{`"1.5e+06"`}},
		{"negative rate", user("rate_limit = -1\n"), "users[0].rate_limit", []string{`"-1"`, "negative"}},
		{"huge rate", user("rate_limit = \"99999999999GiB\"\n"), "users[0].rate_limit", []string{"too large"}},
		{"burst without rate", user("rate_burst = \"1MiB\"\n"), "users[0].rate_burst", []string{`"1MiB"`, "rate_limit"}},
		{"burst under udp_max_datagram", user("rate_limit = \"1MiB\"\nrate_burst = 4096\n"), "users[0].rate_burst", []string{`"4096"`, "udp_max_datagram (8192)"}},
		{"bad burst", user("rate_limit = \"1MiB\"\nrate_burst = \"lots\"\n"), "users[0].rate_burst", []string{`"lots"`}},
		{"unknown limit key", user("rate = 5\n"), "", []string{"unknown key", "users[0].rate"}},
		{"limit key with wrong case", "[server]\nMax_Connections = 5\n", "", []string{"unknown key", "server.Max_Connections"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err == nil {
				t.Fatalf("Parse:\n%s\n= %+v, want an error", tt.text, c)
			}
			msg := err.Error()
			for _, w := range append([]string{fileName, tt.key}, tt.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if tt.key == "" {
				return
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Key != tt.key {
				t.Errorf("error %v: want a *config.Error for %s", err, tt.key)
			}
		})
	}
}
