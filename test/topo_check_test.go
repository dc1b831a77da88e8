//go:build linux

package test

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// TestTopology checks the test bed itself, without the daemon: if these
// fail, proxy test failures mean nothing.
func TestTopology(t *testing.T) {
	e := getEnv(t)
	P, C, U := e.topo.P, e.topo.C, e.topo.U

	// From P, binding to each NIC (curl --interface NAME = SO_BINDTODEVICE),
	// whoami must see that NIC's address, over IPv4 and IPv6.
	cases := []struct{ dev, url, want string }{
		{"wan1", "http://10.231.9.9:8080/", wan1V4},
		{"wan2", "http://10.231.9.9:8080/", wan2V4},
		{"wan1", "http://[fd31:9::9]:8080/", wan1V6},
		{"wan2", "http://[fd31:9::9]:8080/", wan2V6},
	}
	for _, c := range cases {
		out, code := nsCurl(t, P, "--interface", c.dev, c.url)
		if code != 0 || out != c.want {
			t.Errorf("P curl --interface %s %s = %q (exit %d), want %q", c.dev, c.url, out, code, c.want)
		}
	}
	// Unbound, the lower-metric default route wins: wan1. This is exactly
	// the situation the daemon's SO_BINDTODEVICE has to overcome for bob.
	if out, code := nsCurl(t, P, "http://10.231.9.9:8080/"); code != 0 || out != wan1V4 {
		t.Errorf("P curl without binding = %q (exit %d), want %q", out, code, wan1V4)
	}
	// Source 10.231.2.1 leaving by wan1 must be dropped by U's strict
	// rp_filter: only the right interface works, not merely the right source.
	// Exit 28 = timeout (the SYN vanishes), not 7 (refused/unreachable).
	if out, code := nsCurl(t, P, "--connect-timeout", "2", "--interface", wan2V4, "http://10.231.9.9:8080/"); code != 28 {
		t.Errorf("spoofed source via wan1: got %q exit %d, want exit 28 (dropped by rp_filter)", out, code)
	}
	// C cannot reach U directly (no route; P does not forward) ...
	if out, code := nsCurl(t, C, "--connect-timeout", "2", "http://10.231.9.9:8080/"); code != 7 {
		t.Errorf("C direct to U: got %q exit %d, want exit 7 (no route)", out, code)
	}
	// ... and U has no route back to the client network.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, _, err := nstest.Run(ctx, nil, "ip", "-n", U, "route", "get", clientV4); err == nil {
		t.Errorf("U has a route to the client net: %s", out)
	}

	// The DNS server answers P's resolver (/etc/netns/P/resolv.conf) and
	// logs the source: unbound, queries leave by wan1.
	mark := e.dns.mark()
	out, _, err := nstest.Run(ctx, nil, "ip", "netns", "exec", P, "getent", "ahosts", "whoami.test")
	if err != nil || !strings.Contains(out, svcV4) || !strings.Contains(out, svcV6) {
		t.Errorf("getent ahosts whoami.test in P = %q, %v; want %s and %s", out, err, svcV4, svcV6)
	}
	if got := e.dns.sourcesSince(mark, "whoami.test."); !slices.Equal(got, []string{wan1V4}) {
		t.Errorf("DNS query sources for whoami.test = %v, want [%s]", got, wan1V4)
	}
	out, _, err = nstest.Run(ctx, nil, "ip", "netns", "exec", P, "getent", "hosts", "loop.test")
	if err != nil || !strings.HasPrefix(out, "127.0.0.1 ") {
		t.Errorf("getent hosts loop.test in P = %q, %v; want 127.0.0.1", out, err)
	}
	var ee *exec.ExitError
	if _, _, err = nstest.Run(ctx, nil, "ip", "netns", "exec", P, "getent", "hosts", "nosuch.test"); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("getent hosts nosuch.test in P: %v, want exit 2 (not found)", err)
	}
}

// nsCurl runs a plain curl (no proxy) in ns; returns trimmed body and exit.
func nsCurl(tb testing.TB, ns string, args ...string) (string, int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append([]string{"netns", "exec", ns, "curl", "-sS", "-g", "--max-time", "10"}, args...)
	out, _, err := nstest.Run(ctx, nil, "ip", args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return strings.TrimSpace(out), 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return strings.TrimSpace(out), ee.ExitCode()
	default:
		tb.Fatalf("curl in %s: %v", ns, err)
		return "", -1
	}
}
