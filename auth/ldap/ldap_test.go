package ldap_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/auth"
	"github.com/ifsocks/ifsocks/auth/ldap"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/internal/slapdtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The directory: alice and bob in the group proxy, eve not; bob's entry
// carries his egress in stock inetOrgPerson attributes.
const people = `dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Liddell
userPassword: alice-Pw-4f2a
departmentNumber: wan1

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
userPassword: bob-Pw-91c3
roomNumber: wan2
roomNumber: wan1
employeeNumber: 7
employeeType: 1MiB

dn: uid=eve,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: eve
cn: Eve
sn: Outsider
userPassword: eve-Pw-0d77

dn: cn=ifsocks,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: ifsocks
userPassword: svc-Pw-23be

dn: cn=proxy,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: proxy
member: uid=alice,ou=people,dc=example,dc=org
member: uid=bob,ou=people,dc=example,dc=org
`

var attributes = map[string]string{
	"interface":  "departmentNumber",
	"interfaces": "roomNumber",
	"mark":       "employeeNumber",
	"rate_limit": "employeeType",
}

func newClient(t *testing.T, o ldap.Options) *ldap.Client {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.PoolSize == 0 {
		o.PoolSize = 2
	}
	c, err := ldap.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func lookup(t *testing.T, c *ldap.Client, user, pass string) (auth.Answer, error) {
	t.Helper()
	return c.Lookup(context.Background(), auth.Request{User: user, Password: pass,
		Client: netip.MustParseAddrPort("127.0.0.1:40000"), Protocol: "socks5"})
}

func TestLDAP(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{LDIF: people})
	svcPass := "svc-Pw-23be"
	modes := []struct {
		name string
		opt  ldap.Options
	}{
		{"bind template over ldaps", ldap.Options{URL: srv.LDAPS, CAFile: srv.CAFile,
			BindDN: "uid={user},ou=people,dc=example,dc=org", GroupDN: "cn=proxy,ou=groups,dc=example,dc=org", Attributes: attributes}},
		{"search as service over starttls", ldap.Options{URL: srv.LDAP, StartTLS: true, CAFile: srv.CAFile,
			SearchBase: "ou=people,dc=example,dc=org", SearchFilter: "(&(objectClass=inetOrgPerson)(uid={user}))",
			ServiceDN: "cn=ifsocks,dc=example,dc=org", ServicePassword: svcPass,
			GroupDN: "cn=proxy,ou=groups,dc=example,dc=org", Attributes: attributes}},
		{"anonymous search over ldaps", ldap.Options{URL: srv.LDAPS, CAFile: srv.CAFile,
			SearchBase: "ou=people,dc=example,dc=org", SearchFilter: "(uid={user})",
			GroupDN: "cn=proxy,ou=groups,dc=example,dc=org", Attributes: attributes}},
	}
	cfg, err := config.Parse(nil, "empty")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			c := newClient(t, m.opt)
			a, err := lookup(t, c, "bob", "bob-Pw-91c3")
			if err != nil || !a.Allow {
				t.Fatalf("bob: %+v, %v; want allowed", a, err)
			}
			// The attributes become bob's egress by the [[users]] rules.
			u, err := cfg.UserFromAnswer("bob", a.Fields)
			if err != nil {
				t.Fatalf("bob's answer %v: %v", a.Fields, err)
			}
			if !slices.Equal(u.Interfaces, []string{"wan2", "wan1"}) || u.Mark != 7 || u.RateLimit != 1<<20 {
				t.Errorf("bob's settings = %+v, want interfaces wan2, wan1, mark 7, 1MiB/s", u)
			}
			if a, err := lookup(t, c, "alice", "alice-Pw-4f2a"); err != nil || !a.Allow || !slices.Equal(a.Fields["interface"].([]string), []string{"wan1"}) {
				t.Errorf("alice: %+v, %v; want allowed with interface wan1", a, err)
			}
			refused := []struct{ what, user, pass string }{
				{"wrong password", "alice", "bob-Pw-91c3"},
				{"empty password (an unauthenticated bind)", "alice", ""},
				{"unknown user", "mallory", "alice-Pw-4f2a"},
				{"not in group_dn", "eve", "eve-Pw-0d77"},
				// Injection: unescaped, these names would match alice's
				// entry (the filter) or another DN, and her password
				// would log them in.
				{"filter injection", "*)(uid=*", "alice-Pw-4f2a"},
				{"wildcard name", "ali*", "alice-Pw-4f2a"},
				{"filter injection matching alice", "*)(departmentNumber=wan1", "alice-Pw-4f2a"},
				{"DN injection", "alice,ou=people,dc=example,dc=org", "alice-Pw-4f2a"},
			}
			for _, r := range refused {
				a, err := lookup(t, c, r.user, r.pass)
				if err != nil || a.Allow {
					t.Errorf("%s (%q): %+v, %v; want a refusal (no error)", r.what, r.user, a, err)
				}
			}
		})
	}

	t.Run("certificate from another CA", func(t *testing.T) {
		c := newClient(t, ldap.Options{URL: srv.LDAPS, CAFile: srv.OtherCA(t), BindDN: "uid={user},ou=people,dc=example,dc=org"})
		if a, err := lookup(t, c, "alice", "alice-Pw-4f2a"); err == nil {
			t.Errorf("login over an unverified TLS session: %+v", a)
		}
	})

	t.Run("wrong service password is a failure, not a refusal", func(t *testing.T) {
		c := newClient(t, ldap.Options{URL: srv.LDAPS, CAFile: srv.CAFile, SearchBase: "ou=people,dc=example,dc=org",
			SearchFilter: "(uid={user})", ServiceDN: "cn=ifsocks,dc=example,dc=org", ServicePassword: "nope"})
		if a, err := lookup(t, c, "alice", "alice-Pw-4f2a"); err == nil {
			t.Errorf("got %+v, want an error", a)
		}
	})

	t.Run("probe", func(t *testing.T) {
		c := newClient(t, modes[1].opt)
		got, err := c.Probe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Log(got)
	})
}

// TestLDAPStopped: slapd stopped mid-run fails closed (no login without an
// answer, except from the cache within its TTL), and the pool recovers
// when it is back.
func TestLDAPStopped(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{LDIF: people})
	c := newClient(t, ldap.Options{URL: srv.LDAPS, CAFile: srv.CAFile, Timeout: 2 * time.Second,
		BindDN: "uid={user},ou=people,dc=example,dc=org", Attributes: attributes})
	cfg, err := config.Parse(nil, "empty")
	if err != nil {
		t.Fatal(err)
	}
	r := auth.NewRemote(c, auth.RemoteOptions{CacheTTL: time.Hour, MaxConcurrent: 4, Wait: time.Second},
		func(user string, a auth.Answer) (config.User, error) { return cfg.UserFromAnswer(user, a.Fields) })
	ctx := context.Background()
	login := func(user, pass string) (config.User, error) {
		return r.Authenticate(ctx, auth.Request{User: user, Password: pass})
	}
	if u, err := login("alice", "alice-Pw-4f2a"); err != nil || u.Interface != "wan1" {
		t.Fatalf("alice: %+v, %v", u, err)
	}
	srv.Stop()
	if _, err := lookup(t, c, "bob", "bob-Pw-91c3"); err == nil {
		t.Fatal("the directory is down, and yet an answer")
	}
	if _, err := login("bob", "bob-Pw-91c3"); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("bob with the directory down: %v, want ErrUnavailable", err)
	}
	if u, err := login("alice", "alice-Pw-4f2a"); err != nil || u.Interface != "wan1" {
		t.Errorf("alice, cached: %+v, %v; want served from the cache", u, err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if u, err := login("bob", "bob-Pw-91c3"); err != nil || len(u.Interfaces) != 2 {
		t.Errorf("bob after the restart: %+v, %v", u, err)
	}
}

// TestLDAPNew: a bad ca_file is an error at construction.
func TestLDAPNew(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "ca.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	for _, f := range []string{bad, filepath.Join(dir, "missing.pem")} {
		if _, err := ldap.New(ldap.Options{URL: "ldaps://127.0.0.1:1", CAFile: f}); err == nil {
			t.Errorf("ca_file %s accepted", f)
		}
	}
}
