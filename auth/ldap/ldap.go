// Package ldap checks logins against an LDAP directory (OpenLDAP, Active
// Directory): ifsocks' [auth] backend = "ldap".
//
// A login is a simple bind as the user, over TLS only (ldaps:// or
// StartTLS): either to a DN made from a template, or to the DN a search
// finds (as a service account, or anonymously). Optionally the user must be
// a member of a group, and attributes of the user's entry are read as
// egress keys. The user name is escaped for DNs (RFC 4514) and filters
// (RFC 4515), so it cannot change the query. Connections are kept in a
// small pool; every lookup is bounded by the timeout. Caching and
// validation of the egress are auth.Remote's and config's jobs. Not a
// public API.
package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ifsocks/ifsocks/auth"
)

// placeholder is replaced by the escaped user name.
const placeholder = "{user}"

// Options configure a Client; see config.AuthLDAP.
type Options struct {
	URL             string
	StartTLS        bool
	CAFile          string
	Timeout         time.Duration
	BindDN          string
	SearchBase      string
	SearchFilter    string
	ServiceDN       string
	ServicePassword string
	GroupDN         string
	PoolSize        int
	// Attributes maps egress keys to attribute names.
	Attributes map[string]string
}

// Client is an auth.Backend asking a directory.
type Client struct {
	opt   Options
	tls   *tls.Config
	attrs []string // attribute names to read, in Attributes order

	mu     sync.Mutex
	idle   []*ldap.Conn
	closed bool
}

// errDenied: the directory refused the login (wrong password, no such
// user, not in the group). It becomes a refusal, not a failure.
var errDenied = errors.New("refused by the directory")

// New returns a client for o, reading o.CAFile.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	tc := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file: %s: no PEM certificate", o.CAFile)
		}
		tc.RootCAs = pool
	}
	c := &Client{opt: o, tls: tc}
	for _, a := range o.Attributes {
		c.attrs = append(c.attrs, a)
	}
	return c, nil
}

// Lookup checks req's user and password against the directory.
func (c *Client) Lookup(ctx context.Context, req auth.Request) (auth.Answer, error) {
	if req.Password == "" {
		// An empty password is an unauthenticated bind (RFC 4513
		// 5.1.2), which succeeds for any DN: never a login.
		return auth.Answer{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	defer cancel()
	a, err := c.withConn(ctx, func(conn *ldap.Conn) (auth.Answer, error) {
		return c.login(conn, req.User, req.Password)
	})
	if errors.Is(err, errDenied) {
		return auth.Answer{}, nil
	}
	return a, err
}

// withConn runs f on a pooled connection. A pooled connection that fails
// for a network reason (the server restarted) is dropped and f is tried
// once more on a new one. The whole run is bounded by ctx: when it ends,
// the connection is closed under f.
func (c *Client) withConn(ctx context.Context, f func(*ldap.Conn) (auth.Answer, error)) (auth.Answer, error) {
	for attempt := 0; ; attempt++ {
		conn, pooled, err := c.get(ctx)
		if err != nil {
			return auth.Answer{}, err
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		a, err := f(conn)
		cut := !stop()
		if cut && ctx.Err() != nil && (err == nil || !errors.Is(err, errDenied)) {
			err = fmt.Errorf("ldap: %w", ctx.Err())
		}
		if err == nil || errors.Is(err, errDenied) {
			c.put(conn, !cut)
			return a, err
		}
		conn.Close()
		if pooled && attempt == 0 && ctx.Err() == nil && ldap.IsErrorAnyOf(err, ldap.ErrorNetwork) {
			continue
		}
		return auth.Answer{}, err
	}
}

// login binds as the user and reads the answer.
func (c *Client) login(conn *ldap.Conn, user, password string) (auth.Answer, error) {
	var dn string
	var entry *ldap.Entry
	if c.opt.BindDN != "" {
		dn = strings.ReplaceAll(c.opt.BindDN, placeholder, ldap.EscapeDN(user))
		if err := bind(conn, dn, password); err != nil {
			return auth.Answer{}, err
		}
		e, err := c.read(conn, dn)
		if err != nil {
			return auth.Answer{}, err
		}
		entry = e
		if err := c.member(conn, dn, user); err != nil {
			return auth.Answer{}, err
		}
	} else {
		e, err := c.find(conn, user)
		if err != nil {
			return auth.Answer{}, err
		}
		entry, dn = e, e.DN
		// The group is read with the rights the search had.
		if err := c.member(conn, dn, user); err != nil {
			return auth.Answer{}, err
		}
		if err := bind(conn, dn, password); err != nil {
			return auth.Answer{}, err
		}
	}
	return auth.Answer{Allow: true, Fields: c.fields(entry)}, nil
}

// bind binds as dn; invalid credentials are a refusal.
func bind(conn *ldap.Conn, dn, password string) error {
	err := conn.Bind(dn, password)
	switch {
	case err == nil:
		return nil
	case ldap.IsErrorAnyOf(err, ldap.LDAPResultInvalidCredentials, ldap.LDAPResultInvalidDNSyntax,
		ldap.LDAPResultNoSuchObject, ldap.LDAPResultInappropriateAuthentication, ldap.ErrorEmptyPassword):
		return errDenied
	}
	return fmt.Errorf("ldap bind: %w", err)
}

// find searches the user's entry, as the service account if there is one.
func (c *Client) find(conn *ldap.Conn, user string) (*ldap.Entry, error) {
	var err error
	if c.opt.ServiceDN != "" {
		err = conn.Bind(c.opt.ServiceDN, c.opt.ServicePassword)
	} else {
		err = conn.UnauthenticatedBind("")
	}
	if err != nil {
		return nil, fmt.Errorf("ldap service bind: %w", err)
	}
	filter := strings.ReplaceAll(c.opt.SearchFilter, placeholder, ldap.EscapeFilter(user))
	res, err := conn.Search(ldap.NewSearchRequest(c.opt.SearchBase, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 2, c.timeLimit(), false, filter, c.attrs, nil))
	switch {
	case ldap.IsErrorAnyOf(err, ldap.LDAPResultSizeLimitExceeded):
		return nil, fmt.Errorf("ldap search: %q matches several entries", filter)
	case err != nil:
		return nil, fmt.Errorf("ldap search: %w", err)
	case len(res.Entries) == 0:
		return nil, errDenied
	case len(res.Entries) > 1:
		return nil, fmt.Errorf("ldap search: %q matches several entries", filter)
	}
	return res.Entries[0], nil
}

// read reads the mapped attributes of the entry at dn.
func (c *Client) read(conn *ldap.Conn, dn string) (*ldap.Entry, error) {
	if len(c.attrs) == 0 {
		return &ldap.Entry{DN: dn}, nil
	}
	res, err := conn.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, c.timeLimit(), false, "(objectClass=*)", c.attrs, nil))
	if err != nil || len(res.Entries) != 1 {
		return nil, fmt.Errorf("ldap: read %s: %w", dn, err)
	}
	return res.Entries[0], nil
}

// member checks that the user is in GroupDN, as a member or uniqueMember
// (groupOfNames, groupOfUniqueNames: the user's DN) or a memberUid
// (posixGroup: the user name).
func (c *Client) member(conn *ldap.Conn, dn, user string) error {
	if c.opt.GroupDN == "" {
		return nil
	}
	filter := fmt.Sprintf("(|(member=%s)(uniqueMember=%s)(memberUid=%s))",
		ldap.EscapeFilter(dn), ldap.EscapeFilter(dn), ldap.EscapeFilter(user))
	res, err := conn.Search(ldap.NewSearchRequest(c.opt.GroupDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, c.timeLimit(), false, filter, []string{"1.1"}, nil))
	switch {
	case ldap.IsErrorAnyOf(err, ldap.LDAPResultNoSuchObject):
		return fmt.Errorf("ldap: group_dn %s: no such entry (or not readable)", c.opt.GroupDN)
	case err != nil:
		return fmt.Errorf("ldap group search: %w", err)
	case len(res.Entries) == 0:
		return errDenied
	}
	return nil
}

// fields maps the entry's attributes to egress keys: string values, typed
// by config.
func (c *Client) fields(e *ldap.Entry) map[string]any {
	out := make(map[string]any, len(c.opt.Attributes))
	for key, attr := range c.opt.Attributes {
		if vs := e.GetAttributeValues(attr); len(vs) > 0 {
			out[key] = vs
		}
	}
	return out
}

func (c *Client) timeLimit() int { return max(int(c.opt.Timeout/time.Second), 1) }

// get takes an idle connection or dials one.
func (c *Client) get(ctx context.Context) (conn *ldap.Conn, pooled bool, err error) {
	c.mu.Lock()
	for len(c.idle) > 0 {
		conn = c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if !conn.IsClosing() {
			c.mu.Unlock()
			return conn, true, nil
		}
		conn.Close()
	}
	c.mu.Unlock()
	conn, err = c.dial(ctx)
	return conn, false, err
}

// dial connects, with TLS from the start (ldaps) or by StartTLS.
func (c *Client) dial(ctx context.Context) (*ldap.Conn, error) {
	timeout := c.opt.Timeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	d := &net.Dialer{Timeout: timeout}
	conn, err := ldap.DialURL(c.opt.URL, ldap.DialWithDialer(d), ldap.DialWithTLSConfig(c.tls))
	if err != nil {
		return nil, fmt.Errorf("ldap dial: %w", err)
	}
	conn.SetTimeout(c.opt.Timeout)
	if c.opt.StartTLS {
		if err := conn.StartTLS(c.tls); err != nil {
			conn.Close()
			return nil, fmt.Errorf("ldap starttls: %w", err)
		}
	}
	return conn, nil
}

// put returns a connection to the pool, or closes it.
func (c *Client) put(conn *ldap.Conn, reusable bool) {
	c.mu.Lock()
	if reusable && !c.closed && len(c.idle) < c.opt.PoolSize && !conn.IsClosing() {
		c.idle = append(c.idle, conn)
		conn = nil
	}
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Close closes the idle connections; connections in use are closed when
// their lookup ends.
func (c *Client) Close() error {
	c.mu.Lock()
	idle := c.idle
	c.idle, c.closed = nil, true
	c.mu.Unlock()
	for _, conn := range idle {
		conn.Close()
	}
	return nil
}

// Probe connects and, in search mode with a service account, binds as it:
// for -check. It reports the TLS version and the server certificate's
// subject.
func (c *Client) Probe(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	st, ok := conn.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		return "", errors.New("ldap: no TLS session")
	}
	out := fmt.Sprintf("%s, server certificate %q", tls.VersionName(st.Version), st.PeerCertificates[0].Subject)
	if c.opt.ServiceDN != "" {
		if err := conn.Bind(c.opt.ServiceDN, c.opt.ServicePassword); err != nil {
			return out, fmt.Errorf("ldap service bind as %s: %w", c.opt.ServiceDN, err)
		}
		out += ", service bind ok"
	}
	return out, nil
}
