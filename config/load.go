package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// file mirrors the TOML layout. Presence of optional keys is taken from the
// decoder's MetaData, so plain fields are enough here.
type file struct {
	Server struct {
		Listen           []string `toml:"listen"`
		Protocols        []string `toml:"protocols"`
		HandshakeTimeout string   `toml:"handshake_timeout"`
		IdleTimeout      string   `toml:"idle_timeout"`
		ConnectTimeout   string   `toml:"connect_timeout"`
		ShutdownTimeout  string   `toml:"shutdown_timeout"`
		BindTimeout      string   `toml:"bind_timeout"`
		TCPKeepAlive     string   `toml:"tcp_keepalive"`
		Deny             []string `toml:"deny"`
		DenyOwnAddresses bool     `toml:"deny_own_addresses"`
		AllowOpen        bool     `toml:"allow_open"`
		UDPPorts         string   `toml:"udp_ports"`
		UDPAdvertise     string   `toml:"udp_advertise"`
		MaxAssociations  int      `toml:"max_associations"`
		UDPMaxDatagram   int      `toml:"udp_max_datagram"`
		UDPReplyFilter   string   `toml:"udp_reply_filter"`
		UDPRequirePort   bool     `toml:"udp_require_port"`

		ReloadClosesRemoved bool `toml:"reload_closes_removed"`

		MaxHandshakesPerIP int    `toml:"max_handshakes_per_ip"`
		MaxHandshakes      int    `toml:"max_handshakes"`
		AuthFailLimit      int    `toml:"auth_fail_limit"`
		AuthFailLimitIP    int    `toml:"auth_fail_limit_ip"`
		AuthFailWindow     string `toml:"auth_fail_window"`
		AuthFailCooldown   string `toml:"auth_fail_cooldown"`
		MaxConnections     int    `toml:"max_connections"`
	} `toml:"server"`
	Log struct {
		Level  string `toml:"level"`
		Format string `toml:"format"`
	} `toml:"log"`
	Metrics struct {
		Listen string `toml:"listen"`
	} `toml:"metrics"`
	Accounting struct {
		Path          string `toml:"path"`
		FlushInterval string `toml:"flush_interval"`
		OnError       string `toml:"on_error"`
	} `toml:"accounting"`
	Users     []fileUser     `toml:"users"`
	Listeners []fileListener `toml:"listeners"`
	Auth      fileAuth       `toml:"auth"`

	md toml.MetaData
}

// fileEgress holds the egress keys shared by [[users]] and [[listeners]].
type fileEgress struct {
	Interface  string   `toml:"interface"`
	Interfaces []string `toml:"interfaces"`
	Strategy   string   `toml:"strategy"`
	SourceIP   string   `toml:"source_ip"`
	Mark       int64    `toml:"mark"`

	SourceIPs        []string `toml:"source_ips"`
	SourceRotation   string   `toml:"source_rotation"`
	SessionSeparator *string  `toml:"session_separator"`
}

type fileUser struct {
	Name            string `toml:"name"`
	PasswordHash    string `toml:"password_hash"`
	Password        string `toml:"password"`
	MaxAssociations int    `toml:"max_associations"`
	MaxConnections  int    `toml:"max_connections"`
	// RateLimit and RateBurst are an integer (bytes) or a string with a
	// unit ("10MiB"); the validator tells which.
	RateLimit any `toml:"rate_limit"`
	RateBurst any `toml:"rate_burst"`
	fileEgress
	fileQuota
}

type fileListener struct {
	Name         string   `toml:"name"`
	Address      string   `toml:"address"`
	Auth         string   `toml:"auth"`
	AllowClients []string `toml:"allow_clients"`
	Protocols    []string `toml:"protocols"`
	fileEgress
	fileQuota
}

func (f *file) defined(key ...string) bool { return f.md.IsDefined(key...) }

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates configuration text. name is used in error
// messages and as Config.Source.
func Parse(data []byte, name string) (*Config, error) {
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f.md = md
	if err := unknownKeys(data, md); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Config{Source: name}
	v := &validator{}
	applyDefaults(c, &f)
	v.server(c, &f)
	v.log(c)
	v.metrics(c)
	v.accounting(c, &f)
	v.users(c, &f)
	v.auth(c, &f)
	v.serverProtocols(c, &f)
	v.listeners(c, &f)
	v.accountingKeys(c)
	v.openRelay(c)
	if len(v.errs) > 0 {
		for i, e := range v.errs {
			v.errs[i] = fmt.Errorf("%s: %w", name, e)
		}
		return nil, errors.Join(v.errs...)
	}
	return c, nil
}

// unknownKeys makes decoding strict. The TOML decoder matches struct
// fields case-insensitively and only reports keys that match nothing, so
// every key of the file is compared, with its exact spelling, to the keys
// the file struct declares. Keys inside [[users]] are reported with the
// index of the entry that holds them, so the operator can find them.
func unknownKeys(data []byte, md toml.MetaData) error {
	allowed := tomlKeys(reflect.TypeOf(file{}), "")
	var raw map[string]any
	var msgs []string
	for _, k := range md.Keys() {
		if allowed[k.String()] || (len(k) > 1 && allowed[k[:len(k)-1].String()+anyKey]) {
			continue
		}
		if len(k) == 2 && (k[0] == "users" || k[0] == "listeners") {
			if raw == nil {
				_, _ = toml.Decode(string(data), &raw) // decoded once already without error
			}
			entries, _ := raw[k[0]].([]map[string]any)
			for i, u := range entries {
				if _, ok := u[k[1]]; ok {
					msgs = append(msgs, fmt.Sprintf("%s[%d].%s", k[0], i, k[1])+suggest(allowed, k))
				}
			}
			continue
		}
		msgs = append(msgs, k.String()+suggest(allowed, k))
	}
	if len(msgs) == 0 {
		return nil
	}
	sort.Strings(msgs)
	msgs = dedup(msgs)
	return fmt.Errorf("unknown key %s (keys are case-sensitive)", strings.Join(msgs, ", "))
}

// suggest names the known key of k's table nearest to k's last part, as
// " (did you mean NAME?)", when it is near enough to be a misspelling
// (at most a third of its letters, and at least one, differ); else "".
func suggest(allowed map[string]bool, k toml.Key) string {
	parent, leaf := strings.Join(k[:len(k)-1], "."), k[len(k)-1]
	if parent != "" {
		parent += "."
	}
	best, bestDist := "", max(1, len(leaf)/3)+1
	for a := range allowed {
		name, ok := strings.CutPrefix(a, parent)
		if !ok || strings.Contains(name, ".") || name == "*" {
			continue
		}
		if d := editDistance(strings.ToLower(leaf), name); d < bestDist || d == bestDist && name < best {
			best, bestDist = name, d
		}
	}
	if best == "" || bestDist > max(1, len(leaf)/3) {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// editDistance is the Levenshtein distance of a and b (bytes: keys are
// ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// anyKey marks, in tomlKeys, a table whose keys are free-form.
const anyKey = ".*"

// tomlKeys lists the dotted key paths declared by the toml tags of t,
// tables included.
func tomlKeys(t reflect.Type, prefix string) map[string]bool {
	keys := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("toml")
		if f.Anonymous && name == "" {
			// Embedded: its keys belong to the enclosing table.
			for k := range tomlKeys(f.Type, prefix) {
				keys[k] = true
			}
			continue
		}
		if name == "" {
			continue
		}
		path := prefix + name
		keys[path] = true
		ft := f.Type
		if ft.Kind() == reflect.Map {
			// A table of free-form keys ([auth.http.headers]).
			keys[path+anyKey] = true
		}
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			for k := range tomlKeys(ft, path+".") {
				keys[k] = true
			}
		}
	}
	return keys
}

func dedup(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// applyDefaults fills every setting from f, or from its default when the key
// is absent. Values that need parsing are left to the validator.
func applyDefaults(c *Config, f *file) {
	c.Server.Listen = []string{DefaultListen}
	if len(f.Listeners) > 0 {
		// With [[listeners]], the default loopback listener would be a
		// surprise: only what is written is opened.
		c.Server.Listen = nil
	}
	if len(f.Server.Listen) > 0 || f.defined("server", "listen") {
		c.Server.Listen = f.Server.Listen
	}
	c.Server.Protocols = DefaultProtocols
	c.Server.HandshakeTimeout = DefaultHandshakeTimeout
	c.Server.IdleTimeout = DefaultIdleTimeout
	c.Server.ConnectTimeout = DefaultConnectTimeout
	c.Server.ShutdownTimeout = DefaultShutdownTimeout
	c.Server.BindTimeout = DefaultBindTimeout
	c.Server.Deny = slices.Clone(DefaultDeny)
	c.Server.DenyOwnAddresses = true
	if f.defined("server", "deny_own_addresses") {
		c.Server.DenyOwnAddresses = f.Server.DenyOwnAddresses
	}
	c.Server.AllowOpen = f.Server.AllowOpen
	c.Server.ReloadClosesRemoved = f.Server.ReloadClosesRemoved
	c.Metrics.Listen = f.Metrics.Listen
	c.Server.MaxAssociations = DefaultMaxAssociations
	c.Server.UDPMaxDatagram = DefaultUDPMaxDatagram
	c.Server.UDPReplyFilter = DefaultUDPReplyFilter
	c.Server.UDPRequirePort = DefaultUDPRequirePort
	if f.defined("server", "udp_require_port") {
		c.Server.UDPRequirePort = f.Server.UDPRequirePort
	}
	c.Server.MaxHandshakesPerIP = DefaultMaxHandshakesPerIP
	c.Server.MaxHandshakes = MaxHandshakesFromNoFile
	c.Server.AuthFailLimit = DefaultAuthFailLimit
	c.Server.AuthFailLimitIP = DefaultAuthFailLimitIPFactor * DefaultAuthFailLimit
	c.Server.AuthFailWindow = DefaultAuthFailWindow
	c.Server.AuthFailCooldown = DefaultAuthFailCooldown
	c.Server.MaxConnections = DefaultMaxConnections
	c.Accounting.FlushInterval = DefaultFlushInterval
	c.Accounting.OnError = DefaultOnError
	c.Log.Level = DefaultLogLevel
	if f.defined("log", "level") {
		c.Log.Level = f.Log.Level
	}
	c.Log.Format = DefaultLogFormat
	if f.defined("log", "format") {
		c.Log.Format = f.Log.Format
	}
}

// duration parses an optional duration key into dst. zeroOK allows "0s"
// for settings where zero means "disabled".
func (v *validator) duration(f *file, key string, raw string, dst *time.Duration, zeroOK bool) {
	if !f.defined("server", key) {
		return
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		v.add("server."+key, raw, "not a duration (use e.g. \"10s\", \"5m\")")
	case d < 0 || (d == 0 && !zeroOK):
		v.add("server."+key, raw, "must be greater than zero")
	default:
		*dst = d
	}
}
