package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/bind"
	"github.com/ifsocks/ifsocks/config"
)

// errCheckAuth is returned by CheckAuth when the backend cannot be used
// or the dry login was not accepted with a valid answer.
var errCheckAuth = errors.New("auth backend check failed")

// CheckAuth is the auth backend part of -check: it contacts cfg's backend
// once and reports to w whether it answers (for LDAP: the TLS session and
// the service bind). With user set it asks about that login, as the daemon
// would, and reports the refusal or the egress the user would get, checked
// by the same rules (an answer naming an interface this host lacks is an
// error). It sends nothing for backend = "file".
func CheckAuth(ctx context.Context, cfg *config.Config, w io.Writer, user, password string) error {
	a := cfg.Auth
	if !a.Remote() {
		if user != "" {
			return errors.New(`-check-user needs [auth] backend = "http" or "ldap"`)
		}
		return nil
	}
	b, err := openBackend(a)
	if err != nil {
		fmt.Fprintf(w, "auth backend %s: %v\n", a.Backend, err)
		return errCheckAuth
	}
	defer b.closer.Close()
	where := a.HTTP.URL
	if a.Backend == config.BackendLDAP {
		where = a.LDAP.URL
	} else if a.HTTP.Socket != "" {
		where = "unix:" + a.HTTP.Socket
	}
	status, err := b.probe(ctx)
	if err != nil {
		fmt.Fprintf(w, "auth backend %s at %s: not reachable: %v\n", a.Backend, where, err)
		return errCheckAuth
	}
	fmt.Fprintf(w, "auth backend %s at %s: %s\n", a.Backend, where, status)
	if user == "" {
		return nil
	}
	ans, err := b.Lookup(ctx, auth.Request{User: user, Password: password, Protocol: "check"})
	switch {
	case err != nil:
		fmt.Fprintf(w, "user %q: no answer: %v\n", user, err)
		return errCheckAuth
	case !ans.Allow:
		fmt.Fprintf(w, "user %q: refused by the backend\n", user)
		return errCheckAuth
	}
	exists := func(n string) bool { return !errors.Is(bind.CheckInterface(n), bind.ErrNoInterface) }
	u, err := answerUser(cfg, user, ans, exists)
	if err != nil {
		fmt.Fprintf(w, "user %q: accepted, but the answer is not valid (the login would be refused): %v\n", user, err)
		return errCheckAuth
	}
	fmt.Fprintf(w, "user %q: accepted; egress: %s\n", user, describeUser(u))
	return nil
}

// describeUser is the egress and limits of u, as keys and values.
func describeUser(u config.User) string {
	var parts []string
	add := func(k string, v any) { parts = append(parts, fmt.Sprintf("%s=%v", k, v)) }
	e := u.Egress
	switch {
	case e.Interface != "":
		add("interface", e.Interface)
	case len(e.Interfaces) > 0:
		add("interfaces", strings.Join(e.Interfaces, ","))
		add("strategy", e.Strategy)
	}
	if e.SourceIP.IsValid() {
		add("source_ip", e.SourceIP)
	}
	if len(e.SourceIPs) > 0 {
		add("source_ips", e.SourceIPs)
		add("source_rotation", e.Rotation)
	}
	if e.Mark != 0 {
		add("mark", e.Mark)
	}
	if u.RateLimit > 0 {
		add("rate_limit", u.RateLimit)
	}
	if u.MaxConnections > 0 {
		add("max_connections", u.MaxConnections)
	}
	if u.MaxAssociations > 0 {
		add("max_associations", u.MaxAssociations)
	}
	if len(parts) == 0 {
		return "none (the listener's, else kernel routing)"
	}
	return strings.Join(parts, " ")
}
