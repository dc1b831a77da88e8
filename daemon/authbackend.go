package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/auth/hook"
	"github.com/ifsocks/ifsocks/auth/ldap"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/metrics"
	"github.com/ifsocks/ifsocks/socks"
)

// The user's egress comes from the backend's answer, but the egress type
// lives in socks and auth sits below it. So auth speaks in neutral terms
// (auth.Answer: [[users]] keys and values), config validates those with the
// [[users]] rules (config.UserFromAnswer), and here the result becomes a
// socks.User by the same conversion as a [[users]] entry (userOf). The
// auth.Remote caches the converted *socks.User, so a cached login costs a
// map lookup and no conversion.

// remoteBackend is the auth backend of cfg, nil for backend = "file". The
// closer lets go of its connections when the settings are replaced.
type remoteBackend struct {
	auth   socks.Backend
	closer io.Closer
}

// newBackend builds cfg's auth backend. exists reports whether an
// interface is present on the host: an answer naming one that is not is
// refused, since its flows could only fail.
// ledger, when not nil, counts backend users like [[users]] and enforces
// the quota an answer carries.
func newBackend(cfg *config.Config, m *metrics.Metrics, exists func(string) bool, ledger *accounting.Ledger) (*remoteBackend, error) {
	a := cfg.Auth
	b, err := openBackend(a)
	if b == nil || err != nil {
		return nil, err
	}
	name := string(a.Backend)
	opt := auth.RemoteOptions{
		CacheTTL: a.CacheTTL, NegativeTTL: a.NegativeCacheTTL, StaleIfError: a.StaleIfError,
		MaxConcurrent: a.MaxConcurrent, Wait: b.timeout,
		Observe: func(result string, d time.Duration) { m.AuthBackend(name, result, d) },
	}
	build := func(user string, ans auth.Answer) (*socks.User, error) {
		u, err := answerUser(cfg, user, ans, exists)
		if err != nil {
			return nil, err
		}
		su := userOf(u)
		if ledger != nil {
			su.Account = ledger.Counter(user)
			ledger.SetAnswerQuota(user, quota(u.Quota))
		}
		return &su, nil
	}
	return &remoteBackend{auth: auth.NewRemote(b.Backend, opt, build), closer: b.closer}, nil
}

// answerUser validates an accepted answer: the [[users]] rules, and
// interfaces this host has.
func answerUser(cfg *config.Config, user string, ans auth.Answer, exists func(string) bool) (config.User, error) {
	u, err := cfg.UserFromAnswer(user, ans.Fields)
	if err != nil {
		return u, err
	}
	return u, present(u.Egress, exists)
}

// backend is an opened auth backend with what using it needs.
type backend struct {
	auth.Backend
	closer  io.Closer
	timeout time.Duration
	// probe contacts the service once, for -check.
	probe func(context.Context) (string, error)
}

// openBackend builds the client of a's backend; nil for "file".
func openBackend(a config.Auth) (*backend, error) {
	switch a.Backend {
	case config.BackendHTTP:
		h, err := hook.New(hook.Options{URL: a.HTTP.URL, Socket: a.HTTP.Socket, Timeout: a.HTTP.Timeout,
			Headers: a.HTTP.Headers, TokenFile: a.HTTP.TokenFile, MaxConns: a.MaxConcurrent})
		if err != nil {
			return nil, err
		}
		return &backend{Backend: h, closer: h, timeout: a.HTTP.Timeout, probe: h.Probe}, nil
	case config.BackendLDAP:
		l, err := newLDAP(a.LDAP)
		if err != nil {
			return nil, err
		}
		return &backend{Backend: l, closer: l, timeout: a.LDAP.Timeout, probe: l.Probe}, nil
	}
	return nil, nil
}

// present checks that the interfaces an answer names exist.
func present(e config.Egress, exists func(string) bool) error {
	var errs []error
	key := "egress.interface"
	if len(e.Interfaces) > 0 {
		key = "egress.interfaces"
	}
	for _, n := range e.Names() {
		if !exists(n) {
			errs = append(errs, &config.Error{Key: key, Value: n, Reason: "no such interface on this host"})
		}
	}
	return errors.Join(errs...)
}

// newLDAP builds the LDAP backend, reading the service password.
func newLDAP(l config.AuthLDAP) (*ldap.Client, error) {
	opt := ldap.Options{URL: l.URL, StartTLS: l.StartTLS, CAFile: l.CAFile, Timeout: l.Timeout,
		BindDN: l.BindDN, SearchBase: l.SearchBase, SearchFilter: l.SearchFilter,
		ServiceDN: l.ServiceDN, GroupDN: l.GroupDN, PoolSize: l.PoolSize, Attributes: l.Attributes}
	if l.ServicePasswordFile != "" {
		b, err := os.ReadFile(l.ServicePasswordFile)
		if err != nil {
			return nil, fmt.Errorf("auth.ldap.service_password_file: %w", err)
		}
		opt.ServicePassword = strings.TrimRight(string(b), "\r\n")
	}
	c, err := ldap.New(opt)
	if err != nil {
		return nil, fmt.Errorf("auth.ldap: %w", err)
	}
	return c, nil
}

func (b *remoteBackend) close() {
	if b != nil {
		b.closer.Close()
	}
}
