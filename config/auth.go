package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Backend is where users who are not in [[users]] are looked up.
type Backend string

// The backends of [auth] backend.
const (
	BackendFile Backend = "file" // [[users]] only
	BackendHTTP Backend = "http" // an HTTP hook, [auth.http]
	BackendLDAP Backend = "ldap" // a directory, [auth.ldap]
)

// Defaults of [auth]; config.toml.example says why these values.
const (
	DefaultAuthBackend      = BackendFile
	DefaultAuthCacheTTL     = 5 * time.Minute
	DefaultNegativeCacheTTL = 5 * time.Second
	DefaultStaleIfError     = 0 // off: a backend failure refuses at once
	DefaultAuthConcurrent   = 64
	DefaultHTTPAuthTimeout  = 2 * time.Second
	DefaultLDAPTimeout      = 5 * time.Second
	DefaultLDAPPoolSize     = 4
	// UserPlaceholder is replaced by the (escaped) user name in
	// bind_dn and search_filter.
	UserPlaceholder = "{user}"
)

// Auth is the [auth] table: where users come from besides [[users]].
type Auth struct {
	Backend Backend
	// CacheTTL is how long an accepted answer is reused for the same
	// user and password; NegativeCacheTTL the same for a refusal.
	CacheTTL         time.Duration
	NegativeCacheTTL time.Duration
	// StaleIfError, when not 0, lets an accepted answer serve that long
	// past its CacheTTL while the backend fails.
	StaleIfError time.Duration
	// MaxConcurrent caps the backend requests in flight.
	MaxConcurrent int
	HTTP          AuthHTTP
	LDAP          AuthLDAP
}

// Remote reports whether users are looked up beyond [[users]].
func (a *Auth) Remote() bool { return a.Backend != BackendFile && a.Backend != "" }

// AuthHTTP is [auth.http]: a hook answering POSTed JSON.
type AuthHTTP struct {
	// URL is an http or https URL. With a unix socket, its host is a
	// placeholder and only the path counts.
	URL string
	// Socket, when set, is the unix socket the requests go to
	// (url = "unix:/run/authd.sock:/path").
	Socket  string
	Timeout time.Duration
	// Headers are sent with every request.
	Headers map[string]string
	// TokenFile holds a bearer token sent as "Authorization: Bearer"; it
	// is read when the settings are built (start, reload).
	TokenFile string
}

// AuthLDAP is [auth.ldap].
type AuthLDAP struct {
	URL      string // ldaps://host:port or ldap://host:port with StartTLS
	StartTLS bool
	CAFile   string // PEM roots to verify the server; empty: the system's
	Timeout  time.Duration
	// BindDN, when set, is the DN template users bind as (direct bind).
	BindDN string
	// SearchBase and SearchFilter find the user's entry (search then
	// bind), as ServiceDN when set, else anonymously.
	SearchBase          string
	SearchFilter        string
	ServiceDN           string
	ServicePasswordFile string
	// GroupDN, when set, is a group the user must be a member of.
	GroupDN string
	// PoolSize is the number of idle connections kept.
	PoolSize int
	// Attributes maps egress keys ([[users]] key names) to the LDAP
	// attributes that hold them.
	Attributes map[string]string
}

type fileAuth struct {
	Backend          string       `toml:"backend"`
	CacheTTL         string       `toml:"cache_ttl"`
	NegativeCacheTTL string       `toml:"negative_cache_ttl"`
	StaleIfError     string       `toml:"stale_if_error"`
	MaxConcurrent    int          `toml:"max_concurrent"`
	HTTP             fileAuthHTTP `toml:"http"`
	LDAP             fileAuthLDAP `toml:"ldap"`
}

type fileAuthHTTP struct {
	URL       string            `toml:"url"`
	Timeout   string            `toml:"timeout"`
	Headers   map[string]string `toml:"headers"`
	TokenFile string            `toml:"token_file"`
}

type fileAuthLDAP struct {
	URL                 string            `toml:"url"`
	StartTLS            bool              `toml:"start_tls"`
	CAFile              string            `toml:"ca_file"`
	Timeout             string            `toml:"timeout"`
	BindDN              string            `toml:"bind_dn"`
	SearchBase          string            `toml:"search_base"`
	SearchFilter        string            `toml:"search_filter"`
	ServiceDN           string            `toml:"service_dn"`
	ServicePasswordFile string            `toml:"service_password_file"`
	GroupDN             string            `toml:"group_dn"`
	PoolSize            int               `toml:"pool_size"`
	Attributes          map[string]string `toml:"attributes"`
}

// auth validates [auth] and its backend's table.
func (v *validator) auth(c *Config, f *file) {
	a := &c.Auth
	fa := &f.Auth
	*a = Auth{Backend: DefaultAuthBackend, CacheTTL: DefaultAuthCacheTTL,
		NegativeCacheTTL: DefaultNegativeCacheTTL, StaleIfError: DefaultStaleIfError,
		MaxConcurrent: DefaultAuthConcurrent}
	if f.defined("auth", "backend") {
		switch b := Backend(fa.Backend); b {
		case BackendFile, BackendHTTP, BackendLDAP:
			a.Backend = b
		default:
			v.add("auth.backend", fa.Backend, "must be file, http or ldap")
		}
	}
	v.authDuration(f, "auth.cache_ttl", fa.CacheTTL, &a.CacheTTL, false)
	v.authDuration(f, "auth.negative_cache_ttl", fa.NegativeCacheTTL, &a.NegativeCacheTTL, true)
	v.authDuration(f, "auth.stale_if_error", fa.StaleIfError, &a.StaleIfError, true)
	if f.defined("auth", "max_concurrent") {
		if fa.MaxConcurrent < 1 {
			v.add("auth.max_concurrent", strconv.Itoa(fa.MaxConcurrent), "must be at least 1")
		} else {
			a.MaxConcurrent = fa.MaxConcurrent
		}
	}
	for _, t := range []Backend{BackendHTTP, BackendLDAP} {
		if f.defined("auth", string(t)) && a.Backend != t {
			v.add("auth."+string(t), "", fmt.Sprintf("present, but auth.backend is %q; set backend = %q or remove the table", a.Backend, t))
		}
	}
	switch a.Backend {
	case BackendHTTP:
		v.authHTTP(&a.HTTP, f)
	case BackendLDAP:
		v.authLDAP(&a.LDAP, f)
	}
}

// authDuration parses the duration at the dotted key path into dst.
func (v *validator) authDuration(f *file, key, raw string, dst *time.Duration, zeroOK bool) {
	if !f.defined(strings.Split(key, ".")...) {
		return
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		v.add(key, raw, "not a duration (use e.g. \"2s\", \"5m\")")
	case d < 0 || (d == 0 && !zeroOK):
		v.add(key, raw, "must be greater than zero")
	default:
		*dst = d
	}
}

func (v *validator) authHTTP(h *AuthHTTP, f *file) {
	fh := &f.Auth.HTTP
	h.Timeout = DefaultHTTPAuthTimeout
	v.authDuration(f, "auth.http.timeout", fh.Timeout, &h.Timeout, false)
	h.Headers = fh.Headers
	for k, val := range fh.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(val, "\r\n") {
			v.add("auth.http.headers."+k, val, "not a valid HTTP header name and value")
		}
	}
	h.TokenFile = fh.TokenFile
	raw := fh.URL
	if raw == "" {
		v.add("auth.http.url", "", "required with backend = \"http\"")
		return
	}
	if rest, ok := strings.CutPrefix(raw, "unix:"); ok {
		// unix:/run/authd.sock:/ifsocks/auth
		sock, path, found := strings.Cut(rest, ":")
		if !found || !strings.HasPrefix(sock, "/") || !strings.HasPrefix(path, "/") {
			v.add("auth.http.url", raw, "want unix:/absolute/socket:/url-path")
			return
		}
		h.Socket = sock
		h.URL = "http://unix" + path
		return
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add("auth.http.url", raw, "want an http:// or https:// URL, or unix:/socket:/path")
		return
	}
	h.URL = raw
}

func (v *validator) authLDAP(l *AuthLDAP, f *file) {
	fl := &f.Auth.LDAP
	*l = AuthLDAP{URL: fl.URL, StartTLS: fl.StartTLS, CAFile: fl.CAFile, Timeout: DefaultLDAPTimeout,
		BindDN: fl.BindDN, SearchBase: fl.SearchBase, SearchFilter: fl.SearchFilter,
		ServiceDN: fl.ServiceDN, ServicePasswordFile: fl.ServicePasswordFile,
		GroupDN: fl.GroupDN, PoolSize: DefaultLDAPPoolSize, Attributes: fl.Attributes}
	v.authDuration(f, "auth.ldap.timeout", fl.Timeout, &l.Timeout, false)
	if f.defined("auth", "ldap", "pool_size") {
		if fl.PoolSize < 1 {
			v.add("auth.ldap.pool_size", strconv.Itoa(fl.PoolSize), "must be at least 1")
		} else {
			l.PoolSize = fl.PoolSize
		}
	}
	u, err := url.Parse(fl.URL)
	switch {
	case fl.URL == "":
		v.add("auth.ldap.url", "", "required with backend = \"ldap\"")
	case err != nil || u.Host == "" || (u.Scheme != "ldap" && u.Scheme != "ldaps"):
		v.add("auth.ldap.url", fl.URL, "want ldaps://host[:port] or ldap://host[:port] with start_tls = true")
	case u.Scheme == "ldaps" && fl.StartTLS:
		v.add("auth.ldap.start_tls", "true", "not with ldaps:// (already TLS)")
	case u.Scheme == "ldap" && !fl.StartTLS:
		// Passwords go to the directory in a simple bind: never in clear.
		v.add("auth.ldap.url", fl.URL, "ldap:// sends passwords in clear; use ldaps:// or start_tls = true")
	}
	switch {
	case fl.BindDN != "" && (fl.SearchFilter != "" || fl.SearchBase != ""):
		v.add("auth.ldap.bind_dn", fl.BindDN, "set either bind_dn (direct bind) or search_base and search_filter (search then bind)")
	case fl.BindDN != "":
		if !strings.Contains(fl.BindDN, UserPlaceholder) {
			v.add("auth.ldap.bind_dn", fl.BindDN, "must contain "+UserPlaceholder)
		}
		if fl.ServiceDN != "" {
			v.add("auth.ldap.service_dn", fl.ServiceDN, "only used with search_filter")
		}
	case fl.SearchFilter == "" || fl.SearchBase == "":
		v.add("auth.ldap.search_filter", fl.SearchFilter, "set bind_dn, or search_base and search_filter")
	case !strings.Contains(fl.SearchFilter, UserPlaceholder):
		v.add("auth.ldap.search_filter", fl.SearchFilter, "must contain "+UserPlaceholder)
	}
	if (fl.ServiceDN == "") != (fl.ServicePasswordFile == "") {
		v.add("auth.ldap.service_dn", fl.ServiceDN, "set service_dn and service_password_file together")
	}
	for k, attr := range fl.Attributes {
		if !answerKeys[k] {
			v.add("auth.ldap.attributes."+k, attr, "not an egress key; valid: "+strings.Join(AnswerKeys(), ", "))
		}
		if attr == "" || strings.ContainsAny(attr, " ,()=*\\") {
			v.add("auth.ldap.attributes."+k, attr, "not an attribute name")
		}
	}
}
