package check

import (
	"net/netip"
	"strings"
	"testing"
)

// TestPoolReport: what -check says about source_ips pools.
func TestPoolReport(t *testing.T) {
	pool := func(iface string, entries ...string) string {
		s := user("pat", iface)
		q := make([]string, len(entries))
		for i, e := range entries {
			q[i] = `"` + e + `"`
		}
		return s + "source_ips = [" + strings.Join(q, ", ") + "]\n"
	}
	routed := func(p string) func(*fakeHost) {
		return func(h *fakeHost) { h.local = append(h.local, netip.MustParsePrefix(p)) }
	}
	tests := []struct {
		name                 string
		config               string
		host                 func(*fakeHost)
		wantErrors, wantWarn []string
		wantLines            []string
	}{
		{
			name: "routed prefix on its NIC", config: pool("eth1", "2001:db8:80::/80"), host: routed("2001:db8:80::/80"),
			wantLines: []string{"2001:db8:80::/80 on eth1: local route", "about 2^48 IPv6 addresses on eth1, rotation flow"},
		},
		{
			name: "no local route", config: pool("eth1", "2001:db8:80::/80"),
			wantErrors: []string{"users[0].source_ips: 2001:db8:80::/80: no local route and not an address of this host"},
			wantLines:  []string{"2001:db8:80::/80 on eth1: no local route"},
		},
		{
			name: "assigned addresses without interface", config: pool("", "10.0.1.5", "2001:db8:1::5"),
			wantLines: []string{"10.0.1.5/32 on eth1: assigned", "1 IPv4 address and 1 IPv6 address on eth1"},
		},
		{
			name: "address of no NIC without interface", config: pool("", "10.0.1.5", "10.0.1.99"),
			wantErrors: []string{"users[0].source_ips: 10.0.1.99/32 is not an address of this host"},
		},
		{
			name: "spread over two NICs", config: pool("", "10.0.1.5", "10.0.2.5"),
			wantErrors: []string{"users[0].source_ips: the pool's addresses sit on several interfaces (eth1, eth2)"},
		},
		{
			name: "short IPv6 prefix", config: pool("eth1", "2001:db8:80::/56"), host: routed("2001:db8:80::/56"),
			wantWarn: []string{"users[0].source_ips: 2001:db8:80::/56 is shorter than /64"},
		},
		{
			name: "address of another NIC", config: pool("eth1", "10.0.2.5"),
			wantWarn: []string{"users[0].source_ips: 10.0.2.5/32 is assigned to eth2, but the flows leave by interface eth1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := healthyHost()
			if tt.host != nil {
				tt.host(h)
			}
			r := inspect(parse(t, tt.config), "test.toml", h)
			checkFindings(t, r, failure, tt.wantErrors)
			checkFindings(t, r, warning, tt.wantWarn)
			var lines []string
			for _, l := range r.poolLines {
				lines = append(lines, l.text)
			}
			all := strings.Join(lines, "\n")
			for _, w := range tt.wantLines {
				if !strings.Contains(all, w) {
					t.Errorf("pool lines lack %q:\n%s", w, all)
				}
			}
		})
	}
}
