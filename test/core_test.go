//go:build linux

package test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// egressUser is a user whose traffic must leave P by one specific NIC.
type egressUser struct {
	name, pass string
	v4, v6     string // addresses of the user's NIC in P
}

var (
	alice = egressUser{"alice", alicePass, wan1V4, wan1V6}
	bob   = egressUser{"bob", bobPass, wan2V4, wan2V6}
)

var nameSeq atomic.Int64

// freshName returns a new name under whoami.test (the DNS server answers
// all of them like whoami.test), so no resolver cache can hide a query.
func freshName(label string) string {
	return fmt.Sprintf("%s-%d.whoami.test", label, nameSeq.Add(1))
}

// wantEgress checks the address whoami saw. For names with A and AAAA the
// daemon may pick either family, but only ever the user's own NIC.
func wantEgress(tb testing.TB, got string, want ...string) {
	tb.Helper()
	if !slices.Contains(want, got) {
		tb.Errorf("whoami saw %q, want one of %q", got, want)
	}
}

// wantDNSFrom checks that every query for name since mark came from the
// user's NIC address (the DNS server is IPv4 only).
func wantDNSFrom(tb testing.TB, e *env, mark int, name string, u egressUser) {
	tb.Helper()
	if got := e.dns.sourcesSince(mark, name+"."); !slices.Equal(got, []string{u.v4}) {
		tb.Errorf("DNS queries for %s came from %v, want exactly [%s]", name, got, u.v4)
	}
}

// Test 1: per-user egress with curl for IPv4, IPv6 and domain targets.
func TestEgressCurl(t *testing.T) {
	e, _ := getDaemon(t)
	C := e.topo.C
	for _, u := range []egressUser{alice, bob} {
		t.Run(u.name, func(t *testing.T) {
			o := curlOpts{user: u.name, pass: u.pass}
			t.Run("ipv4", func(t *testing.T) {
				wantEgress(t, curlOK(t, C, o, "http://10.231.9.9:8080/"), u.v4)
			})
			t.Run("ipv6", func(t *testing.T) {
				wantEgress(t, curlOK(t, C, o, "http://[fd31:9::9]:8080/"), u.v6)
			})
			h := o
			h.hostname = true
			t.Run("domain", func(t *testing.T) {
				mark := e.dns.mark()
				wantEgress(t, curlOK(t, C, h, "http://whoami.test:8080/"), u.v4, u.v6)
				wantDNSFrom(t, e, mark, "whoami.test", u)
			})
			t.Run("domain-v4only", func(t *testing.T) {
				mark := e.dns.mark()
				wantEgress(t, curlOK(t, C, h, "http://v4only.test:8080/"), u.v4)
				wantDNSFrom(t, e, mark, "v4only.test", u)
			})
			t.Run("ipv6-listener", func(t *testing.T) {
				h6 := h
				h6.proxy = proxyListen6
				name := freshName(u.name)
				mark := e.dns.mark()
				wantEgress(t, curlOK(t, C, h6, "http://"+name+":8080/"), u.v4, u.v6)
				wantDNSFrom(t, e, mark, name, u)
			})
		})
	}
}

// Test 2: the same matrix with golang.org/x/net/proxy and with python3-socks.
func TestEgressGoProxy(t *testing.T) {
	e, _ := getDaemon(t)
	for _, u := range []egressUser{alice, bob} {
		t.Run(u.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			get := func(t *testing.T, url string) string {
				t.Helper()
				body, err := goHTTPGet(ctx, e.topo.C, proxyListen4, u.name, u.pass, url)
				if err != nil {
					t.Fatalf("GET %s as %s: %v", url, u.name, err)
				}
				return body
			}
			t.Run("ipv4", func(t *testing.T) { wantEgress(t, get(t, "http://10.231.9.9:8080/"), u.v4) })
			t.Run("ipv6", func(t *testing.T) { wantEgress(t, get(t, "http://[fd31:9::9]:8080/"), u.v6) })
			t.Run("domain", func(t *testing.T) {
				name := freshName(u.name)
				mark := e.dns.mark()
				wantEgress(t, get(t, "http://"+name+":8080/"), u.v4, u.v6)
				wantDNSFrom(t, e, mark, name, u)
			})
		})
	}
}

func TestEgressPython(t *testing.T) {
	e, _ := getDaemon(t)
	for _, u := range []egressUser{alice, bob} {
		t.Run(u.name, func(t *testing.T) {
			wantEgress(t, pythonGet(t, e.topo.C, u.name, u.pass, svcV4, "8080"), u.v4)
			name := freshName("py-" + u.name)
			mark := e.dns.mark()
			wantEgress(t, pythonGet(t, e.topo.C, u.name, u.pass, name, "8080"), u.v4, u.v6)
			wantDNSFrom(t, e, mark, name, u)
		})
	}
}
