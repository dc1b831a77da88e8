package config_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
)

func TestAuthDefaults(t *testing.T) {
	c := mustParse(t, userTOML("alice", "pw"))
	want := config.Auth{Backend: config.BackendFile, CacheTTL: config.DefaultAuthCacheTTL,
		NegativeCacheTTL: config.DefaultNegativeCacheTTL, MaxConcurrent: config.DefaultAuthConcurrent}
	if c.Auth.Backend != want.Backend || c.Auth.CacheTTL != want.CacheTTL ||
		c.Auth.NegativeCacheTTL != want.NegativeCacheTTL || c.Auth.StaleIfError != 0 ||
		c.Auth.MaxConcurrent != want.MaxConcurrent || c.Auth.Remote() {
		t.Errorf("Auth = %+v, want the defaults %+v", c.Auth, want)
	}
}

func TestAuthValid(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, a config.Auth)
	}{
		{
			name: "http with every key",
			text: `[server]
listen = ["0.0.0.0:1080"]
[auth]
backend = "http"
cache_ttl = "1m"
negative_cache_ttl = "0s"
stale_if_error = "1h"
max_concurrent = 8
[auth.http]
url = "https://auth.example.org/ifsocks"
timeout = "500ms"
token_file = "/etc/ifsocks/token"
[auth.http.headers]
X-Fleet = "eu-1"
`,
			check: func(t *testing.T, a config.Auth) {
				if a.Backend != config.BackendHTTP || a.CacheTTL != time.Minute || a.NegativeCacheTTL != 0 ||
					a.StaleIfError != time.Hour || a.MaxConcurrent != 8 {
					t.Errorf("shared keys = %+v", a)
				}
				h := a.HTTP
				if h.URL != "https://auth.example.org/ifsocks" || h.Socket != "" || h.Timeout != 500*time.Millisecond ||
					h.TokenFile != "/etc/ifsocks/token" || h.Headers["X-Fleet"] != "eu-1" {
					t.Errorf("HTTP = %+v", h)
				}
			},
		},
		{
			name: "http on a unix socket",
			text: "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"unix:/run/authd.sock:/ifsocks/auth\"\n",
			check: func(t *testing.T, a config.Auth) {
				if a.HTTP.Socket != "/run/authd.sock" || a.HTTP.URL != "http://unix/ifsocks/auth" || a.HTTP.Timeout != config.DefaultHTTPAuthTimeout {
					t.Errorf("HTTP = %+v", a.HTTP)
				}
			},
		},
		{
			name: "ldap search then bind",
			text: `[auth]
backend = "ldap"
[auth.ldap]
url = "ldap://127.0.0.1:3890"
start_tls = true
ca_file = "/etc/ifsocks/ca.pem"
search_base = "ou=people,dc=example,dc=org"
search_filter = "(&(objectClass=person)(uid={user}))"
service_dn = "cn=ifsocks,dc=example,dc=org"
service_password_file = "/etc/ifsocks/ldap-pass"
group_dn = "cn=proxy,ou=groups,dc=example,dc=org"
[auth.ldap.attributes]
interface = "ifsocksInterface"
interfaces = "description"
`,
			check: func(t *testing.T, a config.Auth) {
				l := a.LDAP
				if !l.StartTLS || l.SearchBase == "" || l.ServiceDN == "" || l.PoolSize != config.DefaultLDAPPoolSize ||
					l.Timeout != config.DefaultLDAPTimeout || l.Attributes["interfaces"] != "description" {
					t.Errorf("LDAP = %+v", l)
				}
			},
		},
		{
			name: "ldaps direct bind",
			text: "[auth]\nbackend = \"ldap\"\n[auth.ldap]\nurl = \"ldaps://ldap.example.org\"\nbind_dn = \"uid={user},ou=people,dc=example,dc=org\"\npool_size = 2\n",
			check: func(t *testing.T, a config.Auth) {
				if a.LDAP.BindDN == "" || a.LDAP.PoolSize != 2 {
					t.Errorf("LDAP = %+v", a.LDAP)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.text)
			tt.check(t, c.Auth)
			if !c.HasUsers() {
				t.Error("HasUsers() = false with a remote backend")
			}
		})
	}
}

func TestAuthErrors(t *testing.T) {
	ldap := "[auth]\nbackend = \"ldap\"\n[auth.ldap]\n"
	tests := []struct {
		name, text, key string
	}{
		{"unknown backend", "[auth]\nbackend = \"radius\"\n", "auth.backend"},
		{"bad ttl", "[auth]\ncache_ttl = \"soon\"\n", "auth.cache_ttl"},
		{"zero ttl", "[auth]\ncache_ttl = \"0s\"\n", "auth.cache_ttl"},
		{"max_concurrent 0", "[auth]\nmax_concurrent = 0\n", "auth.max_concurrent"},
		{"http table without backend", "[auth.http]\nurl = \"http://127.0.0.1:9000/\"\n", "auth.http"},
		{"http without url", "[auth]\nbackend = \"http\"\n", "auth.http.url"},
		{"http bad url", "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"ftp://x/\"\n", "auth.http.url"},
		{"http bad unix url", "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"unix:run.sock\"\n", "auth.http.url"},
		{"http bad header", "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://127.0.0.1:9/\"\n[auth.http.headers]\n\"A B\" = \"x\"\n", "auth.http.headers.A B"},
		{"ldap clear text", ldap + "url = \"ldap://10.0.0.1\"\nbind_dn = \"uid={user}\"\n", "auth.ldap.url"},
		{"ldaps with start_tls", ldap + "url = \"ldaps://10.0.0.1\"\nstart_tls = true\nbind_dn = \"uid={user}\"\n", "auth.ldap.start_tls"},
		{"ldap neither mode", ldap + "url = \"ldaps://10.0.0.1\"\n", "auth.ldap.search_filter"},
		{"ldap both modes", ldap + "url = \"ldaps://10.0.0.1\"\nbind_dn = \"uid={user}\"\nsearch_base = \"dc=x\"\nsearch_filter = \"(uid={user})\"\n", "auth.ldap.bind_dn"},
		{"ldap template without user", ldap + "url = \"ldaps://10.0.0.1\"\nbind_dn = \"uid=alice\"\n", "auth.ldap.bind_dn"},
		{"ldap service half", ldap + "url = \"ldaps://10.0.0.1\"\nsearch_base = \"dc=x\"\nsearch_filter = \"(uid={user})\"\nservice_dn = \"cn=svc\"\n", "auth.ldap.service_dn"},
		{"ldap unknown attribute key", ldap + "url = \"ldaps://10.0.0.1\"\nbind_dn = \"uid={user}\"\n[auth.ldap.attributes]\ncolour = \"x\"\n", "auth.ldap.attributes.colour"},
		{"ldap unknown key", ldap + "url = \"ldaps://10.0.0.1\"\nbind_dn = \"uid={user}\"\nbind_template = \"x\"\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text)
			if err == nil {
				t.Fatalf("Parse:\n%s\nwant an error", tt.text)
			}
			if tt.key == "" {
				if !strings.Contains(err.Error(), "unknown key") {
					t.Errorf("error %q, want an unknown key", err)
				}
				return
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Key != tt.key {
				t.Errorf("error %v, want one with key %q", err, tt.key)
			}
		})
	}
}

// TestAuthOpenRelay: a remote backend counts as users, so a listener off
// loopback needs no allow_open, and auth = "password" listeners are fine.
func TestAuthOpenRelay(t *testing.T) {
	text := "[server]\nlisten = [\"0.0.0.0:1080\"]\n[[listeners]]\naddress = \"0.0.0.0:1081\"\n" +
		"[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://127.0.0.1:9000/\"\n"
	mustParse(t, text)
}

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestUserFromAnswer(t *testing.T) {
	c := mustParse(t, "")
	good := []struct {
		name, json string
		check      func(t *testing.T, u config.User)
	}{
		{"interface", `{"interface":"eth1"}`, func(t *testing.T, u config.User) {
			if u.Interface != "eth1" {
				t.Errorf("Interface = %q", u.Interface)
			}
		}},
		{"interfaces and limits", `{"interfaces":["eth1","eth2"],"strategy":"hash","mark":7,"rate_limit":"1MiB","max_connections":3,"max_associations":2}`,
			func(t *testing.T, u config.User) {
				if !slices.Equal(u.Interfaces, []string{"eth1", "eth2"}) || u.Strategy != config.StrategyHash || u.Mark != 7 ||
					u.RateLimit != 1<<20 || u.RateBurst != config.DefaultRateBurst(1<<20) || u.MaxConnections != 3 || u.MaxAssociations != 2 {
					t.Errorf("User = %+v", u)
				}
			}},
		{"source ip, null ignored", `{"source_ip":"10.0.0.5","interface":null}`, func(t *testing.T, u config.User) {
			if u.SourceIP != netip.MustParseAddr("10.0.0.5") {
				t.Errorf("SourceIP = %v", u.SourceIP)
			}
		}},
		{"address pool (issue 14 keys)", `{"source_ips":["10.0.0.10","10.0.0.16/30"],"source_rotation":"user","interface":"eth1"}`,
			func(t *testing.T, u config.User) {
				if len(u.SourceIPs) != 2 || u.Rotation != config.RotationUser {
					t.Errorf("Egress = %+v, want the pool with user rotation", u.Egress)
				}
			}},
		{"empty: kernel routing", `{}`, func(t *testing.T, u config.User) {
			if !u.Egress.IsZero() {
				t.Errorf("Egress = %+v", u.Egress)
			}
		}},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			u, err := c.UserFromAnswer("alice", decodeJSON(t, tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != "alice" {
				t.Errorf("Name = %q", u.Name)
			}
			tt.check(t, u)
		})
	}
	bad := []struct{ name, json, key string }{
		{"unknown key", `{"iface":"eth1"}`, "egress.iface"},
		{"password not accepted", `{"password":"x"}`, "egress.password"},
		{"bad interface name", `{"interface":"eth/1"}`, "egress.interface"},
		{"both interface and interfaces", `{"interface":"eth1","interfaces":["eth2"]}`, "egress.interfaces"},
		{"bad strategy", `{"interfaces":["eth1"],"strategy":"random"}`, "egress.strategy"},
		{"mark negative", `{"mark":-1}`, "egress.mark"},
		{"mark fraction", `{"mark":1.5}`, "egress"},
		{"mark as string", `{"mark":"7"}`, "egress"},
		{"bad rate", `{"rate_limit":"fast"}`, "egress.rate_limit"},
		{"source not an ip", `{"source_ip":"eth1"}`, "egress.source_ip"},
		{"bad rotation", `{"source_ips":["10.0.0.10"],"source_rotation":"hourly"}`, "egress.source_rotation"},
		{"quota without accounting", `{"quota":"1GiB"}`, "egress.quota"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			u, err := c.UserFromAnswer("alice", decodeJSON(t, tt.json))
			if err == nil {
				t.Fatalf("UserFromAnswer(%s) = %+v, want an error", tt.json, u)
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Key != tt.key {
				t.Errorf("error %v, want one with key %q", err, tt.key)
			}
			if tt.key == "egress" && !strings.Contains(err.Error(), "mark") {
				t.Errorf("error %v does not name the key", err)
			}
		})
	}
}

// TestUserFromAnswerQuota: a backend may answer a quota where this host
// keeps accounting, validated as a [[users]] quota.
func TestUserFromAnswerQuota(t *testing.T) {
	c := mustParse(t, "[accounting]\npath = \"/var/lib/ifsocks/usage.db\"\n")
	u, err := c.UserFromAnswer("alice", decodeJSON(t, `{"quota":"10MiB","quota_period":"week"}`))
	if err != nil {
		t.Fatal(err)
	}
	if u.Quota.Bytes != 10<<20 || u.Quota.Period != config.PeriodWeek {
		t.Errorf("Quota = %+v, want 10MiB a week", u.Quota)
	}
	_, err = c.UserFromAnswer("alice", decodeJSON(t, `{"quota":"10MiB","quota_period":"hourly"}`))
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Key != "egress.quota_period" {
		t.Errorf("bad period: error %v, want one with key egress.quota_period", err)
	}
}

// TestUserFromAttributes: directory attributes arrive as strings and are
// typed by their key.
func TestUserFromAttributes(t *testing.T) {
	c := mustParse(t, "")
	u, err := c.UserFromAnswer("bob", map[string]any{
		"interfaces": []string{"eth1", "eth2"}, "mark": []string{"42"}, "rate_limit": []string{"10MiB"},
		"strategy": []string{"round-robin"}, "source_ip": []string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u.Interfaces, []string{"eth1", "eth2"}) || u.Mark != 42 || u.RateLimit != 10<<20 || u.Strategy != config.StrategyRoundRobin {
		t.Errorf("User = %+v", u)
	}
	for name, tt := range map[string]struct {
		in  map[string]any
		key string
	}{
		"two interface values": {map[string]any{"interface": []string{"eth1", "eth2"}}, "egress.interface"},
		"mark not a number":    {map[string]any{"mark": []string{"x"}}, "egress.mark"},
		"unknown key":          {map[string]any{"colour": []string{"red"}}, "egress.colour"},
	} {
		_, err := c.UserFromAnswer("bob", tt.in)
		var ce *config.Error
		if !errors.As(err, &ce) || ce.Key != tt.key {
			t.Errorf("%s: error %v, want one with key %q", name, err, tt.key)
		}
	}
}

// TestExampleAuth: config.toml.example documents the [auth] defaults, and
// its commented backend tables are valid once uncommented.
func TestExampleAuth(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "config.toml.example"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(data, "example")
	if err != nil {
		t.Fatal(err)
	}
	a := c.Auth
	if a.Backend != config.DefaultAuthBackend || a.CacheTTL != config.DefaultAuthCacheTTL ||
		a.NegativeCacheTTL != config.DefaultNegativeCacheTTL || a.StaleIfError != config.DefaultStaleIfError ||
		a.MaxConcurrent != config.DefaultAuthConcurrent {
		t.Errorf("example [auth] = %+v, want the defaults", a)
	}
	text := string(data)
	i := strings.Index(text, "\n[auth]\n")
	if i < 0 {
		t.Fatal("no [auth] in the example")
	}
	// Uncomment the settings of one backend at a time (keys and table
	// headers, not the prose).
	for _, b := range []struct{ backend, table, skip string }{
		{"http", "[auth.http]", "[auth.ldap]"},
		{"ldap", "[auth.ldap]", ""},
	} {
		var out []string
		on := false
		for _, line := range strings.Split(text[i:], "\n") {
			body, commented := strings.CutPrefix(line, "# ")
			switch {
			case commented && body == b.table:
				on = true
			case commented && body == b.skip && b.skip != "":
				on = false
			}
			// In the LDAP table, bind_dn is the alternative to
			// the search keys: keep the search.
			if on && commented && exampleSetting(body) && !strings.HasPrefix(body, "bind_dn") {
				line = body
			}
			out = append(out, line)
		}
		cfg := strings.Replace(strings.Join(out, "\n"), "backend = \"file\"", "backend = \""+b.backend+"\"", 1)
		bc, err := config.Parse([]byte(cfg), "example-"+b.backend)
		if err != nil {
			t.Errorf("example with [auth] backend = %s uncommented: %v\n%s", b.backend, err, cfg)
			continue
		}
		if string(bc.Auth.Backend) != b.backend {
			t.Errorf("backend = %q, want %q", bc.Auth.Backend, b.backend)
		}
	}
}

// exampleSetting reports whether a commented example line is a setting
// (key = value, or a table header) rather than prose.
func exampleSetting(s string) bool {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return true
	}
	k, _, ok := strings.Cut(s, " = ")
	return ok && !strings.Contains(k, " ") && k != "" && k != "stale_if_error"
}
