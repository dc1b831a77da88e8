//go:build linux

package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
	"github.com/ifsocks/ifsocks/internal/slapdtest"
)

// The LDAP backend end to end: slapd inside P (on its loopback, TLS with a
// CA made for the run), the daemon in P asking it, users leaving by the
// NICs their directory entries name.

const ldapPeople = `dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=lina,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: lina
cn: Lina
sn: One
userPassword: lina-Pw-5e02
departmentNumber: wan1

dn: uid=otto,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: otto
cn: Otto
sn: Two
userPassword: otto-Pw-aa31
departmentNumber: wan2

dn: uid=nemo,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: nemo
cn: Nemo
sn: Three
userPassword: nemo-Pw-61d0
departmentNumber: wan1

dn: cn=ifsocks,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: ifsocks
userPassword: svc-Pw-e8a4

dn: cn=proxy,dc=example,dc=org
objectClass: groupOfNames
cn: proxy
member: uid=lina,ou=people,dc=example,dc=org
member: uid=otto,ou=people,dc=example,dc=org
`

var (
	ldLina = nstest.User{Name: "lina", Password: "lina-Pw-5e02"}
	ldOtto = nstest.User{Name: "otto", Password: "otto-Pw-aa31"}
	ldNemo = nstest.User{Name: "nemo", Password: "nemo-Pw-61d0"} // not in the group
)

func TestAuthLDAP(t *testing.T) {
	topo := newEgressTopologyAs(t, authPrefix)
	startEgressWhoami(t, topo)
	srv := slapdtest.Start(t, slapdtest.Options{LDIF: ldapPeople, Netns: topo.P,
		Dial: nstest.Dialer{NS: topo.P, Timeout: time.Second}.Dial})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "svc"), []byte("svc-Pw-e8a4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`
[auth]
backend = "ldap"
cache_ttl = "1h"
negative_cache_ttl = "0s"
[auth.ldap]
url = %q
start_tls = true
ca_file = %q
timeout = "2s"
search_base = "ou=people,dc=example,dc=org"
search_filter = "(&(objectClass=inetOrgPerson)(uid={user}))"
service_dn = "cn=ifsocks,dc=example,dc=org"
service_password_file = %q
group_dn = "cn=proxy,dc=example,dc=org"
[auth.ldap.attributes]
interface = "departmentNumber"
`, srv.LDAP, srv.CAFile, filepath.Join(dir, "svc"))
	cfg := strings.Replace(egressConfig([]string{egProxy + ":1080"}, body), "[server]\n", "[server]\nauth_fail_limit = 0\n", 1)
	secrets := []string{ldLina.Password, ldOtto.Password, ldNemo.Password, "svc-Pw-e8a4"}
	od := spawnDaemon(t, topo, "ldap", cfg, nil, func(od *opsDaemon) {
		for _, line := range strings.Split(od.logs.String(), "\n") {
			for _, p := range secrets {
				if strings.Contains(line, p) {
					t.Errorf("daemon log contains a secret: %s", line)
				}
			}
		}
	})
	proxyAddr := egProxy + ":1080"
	if err := od.waitListening([]string{proxyAddr}, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// Each user leaves by the NIC of its entry's departmentNumber.
	wantSeen(t, od, topo.C, proxyAddr, ldLina, egTarget, seenWan1)
	wantSeen(t, od, topo.C, proxyAddr, ldOtto, egTarget, seenWan2)
	for _, u := range []nstest.User{
		{Name: "lina", Password: "otto-Pw-aa31"}, // wrong password
		ldNemo,                                   // not in group_dn
		{Name: "*)(uid=*", Password: ldLina.Password},
		{Name: "lin*", Password: ldLina.Password},
		{Name: "*)(departmentNumber=wan1", Password: ldLina.Password},
	} {
		mark := od.mark()
		if f, err := egFetch(topo.C, proxyAddr, u, egTarget); err == nil {
			t.Errorf("%q let in (left as %q)", u.Name, f.seen)
			continue
		}
		line := od.waitLineSince(t, mark, "authentication failed")
		if !strings.Contains(fmt.Sprint(line["error"]), "invalid username or password") {
			t.Errorf("%q: %v, want a refusal by the directory", u.Name, line)
		}
	}

	// slapd gone: otto's answer is cached and serves; a new
	// login fails closed, with the backend named as the reason.
	srv.Stop()
	wantSeen(t, od, topo.C, proxyAddr, ldOtto, egTarget, seenWan2)
	mark := od.mark()
	if _, err := egFetch(topo.C, proxyAddr, nstest.User{Name: "lina", Password: "another-Pw"}, egTarget); err == nil {
		t.Error("a login was let in with the directory down")
	}
	line := od.waitLineSince(t, mark, "authentication failed")
	if !strings.Contains(fmt.Sprint(line["error"]), "auth backend unavailable") {
		t.Errorf("with slapd stopped: %v, want the backend unavailable", line)
	}
	wantMetricAtLeast(t, scrape(t, topo.P, egMetrics), "ifsocks_auth_backend_requests_total", map[string]string{"backend": "ldap", "result": "error"}, 1)
	wantMetricAtLeast(t, scrape(t, topo.P, egMetrics), "ifsocks_auth_backend_requests_total", map[string]string{"backend": "ldap", "result": "allow"}, 2)
}
