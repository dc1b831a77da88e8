package config_test

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ifsocks/ifsocks/config"
)

// FuzzParse feeds arbitrary text to the configuration parser. It must
// never panic; an error must name the file; the same text must give the
// same result twice; and an accepted configuration must hold what later
// layers rely on without checking: masked, unmapped deny prefixes,
// durations that are not negative, a known log level, users with exactly
// one kind of password.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../config.toml.example")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	for _, s := range []string{
		"",
		"[server]\ndeny = [\"::ffff:10.0.0.0/104\", \"64:ff9b::/96\", \"10.0.0.1\"]\n",
		"[server]\nlisten = [\"[::1]:1080\"]\nudp_require_port = true\nudp_ports = \"40000-40010\"\n",
		"[[users]]\nname = \"a\"\npassword = \"x\"\ninterfaces = [\"eth0\", \"eth1\"]\nstrategy = \"hash\"\nrate_limit = \"10MiB\"\n",
		"[[listeners]]\naddress = \"127.0.0.1:1081\"\nauth = \"none\"\nallow_clients = [\"::ffff:127.0.0.1\"]\n",
		"[server]\nhandshake_timeout = \"-1s\"\nmax_handshakes_per_ip = -3\n[log]\nlevel = \"loud\"\n",
		"[server]\ndeny = [\"10.1.2.3/8\"]\nbogus = 1\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		c, err := config.Parse([]byte(text), "fuzz.toml")
		c2, err2 := config.Parse([]byte(text), "fuzz.toml")
		if (err == nil) != (err2 == nil) || (err == nil && !reflect.DeepEqual(c, c2)) {
			t.Fatalf("Parse is not deterministic: %v / %v", err, err2)
		}
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a config with error %v", err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %q", err)
			}
			if utf8.ValidString(text) && !utf8.ValidString(err.Error()) {
				t.Fatalf("error is not valid UTF-8: %q", err)
			}
			return
		}
		s := c.Server
		for i, p := range s.Deny {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("server.deny[%d] = %v: not a masked, unmapped prefix", i, p)
			}
		}
		for _, d := range []struct {
			name string
			v    int64
		}{
			{"handshake_timeout", int64(s.HandshakeTimeout)}, {"idle_timeout", int64(s.IdleTimeout)},
			{"connect_timeout", int64(s.ConnectTimeout)}, {"shutdown_timeout", int64(s.ShutdownTimeout)},
			{"bind_timeout", int64(s.BindTimeout)}, {"tcp_keepalive", int64(s.TCPKeepAlive)},
			{"max_associations", int64(s.MaxAssociations)}, {"max_handshakes_per_ip", int64(s.MaxHandshakesPerIP)},
			{"auth_fail_limit", int64(s.AuthFailLimit)}, {"max_connections", int64(s.MaxConnections)},
		} {
			if d.v < 0 {
				t.Fatalf("server.%s = %d accepted", d.name, d.v)
			}
		}
		if s.HandshakeTimeout == 0 || s.ConnectTimeout == 0 {
			t.Fatalf("zero handshake or connect timeout accepted: %v %v", s.HandshakeTimeout, s.ConnectTimeout)
		}
		switch c.Log.Level {
		case "debug", "info", "warn", "error":
		default:
			t.Fatalf("log.level %q accepted", c.Log.Level)
		}
		names := map[string]bool{}
		for i, u := range c.Users {
			if (u.PasswordHash == "") == (u.Password == "") {
				t.Fatalf("users[%d] %q: want exactly one of password and password_hash", i, u.Name)
			}
			if names[u.Name] {
				t.Fatalf("users[%d]: duplicate name %q accepted", i, u.Name)
			}
			names[u.Name] = true
		}
	})
}
