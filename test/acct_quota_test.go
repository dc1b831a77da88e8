//go:build linux

package test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/internal/nstest"
)

// TestAccountingQuotaCut: with a 50 MB quota, a 200 MB download is cut
// once the user has moved between 50 MB and 50 MB plus one flush interval
// of its (paced) traffic, with outcome quota; the next CONNECT and UDP
// ASSOCIATE get 0x02, one warning is logged, the gauge says so, and
// another user is untouched.
func TestAccountingQuotaCut(t *testing.T) {
	topo := newEgressTopologyAs(t, acctPrefix)
	startAcctUpstream(t, topo, 2)
	db := filepath.Join(t.TempDir(), "usage.db")
	const (
		quota = 50_000_000
		rate  = 20 << 20 // bytes per second: one flush interval is 10 MiB
		flush = 500 * time.Millisecond
	)
	cfg := acctConfig(db, 2, flush.String(), "", func(i int) string {
		if i == 0 {
			return fmt.Sprintf("quota = \"50MB\"\nquota_period = \"day\"\nrate_limit = %d\n", rate)
		}
		return ""
	})
	od := startAcctDaemon(t, topo, cfg)
	u, other := acctUser(0), acctUser(1)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	got, err := acctTCP(ctx, topo.C, u, acctTCPBase, 0, 200_000_000)
	t.Logf("download ended after %d bytes: %v", got, err)
	if got >= 200_000_000 || got < quota/2 {
		t.Fatalf("download got %d of 200 MB; want it cut after about 50 MB", got)
	}
	line := od.waitFlow(t, 10*time.Second, func(m map[string]any) bool { return m["user"] == u.Name && m["outcome"] == "quota" })
	if line["reply"] != float64(0) {
		t.Errorf("cut flow line %v: want reply 0 (it had started)", line)
	}
	used := liveUsage(t, topo)[u.Name]
	bound := int64(quota + rate*flush.Seconds() + rate/10 + 1<<20)
	t.Logf("booked %d bytes down, %d up; quota %d, bound %d", used.Down, used.Up, quota, bound)
	if total := used.Up + used.Down; total < quota || total > bound {
		t.Errorf("user moved %d bytes before the cut, want within [%d, %d]", total, quota, bound)
	}
	if used.Quota != quota || used.PercentUsed < 100 || used.Period != "day" {
		t.Errorf("/usage = %+v", used)
	}

	// New flows: refused with 0x02, TCP and UDP alike.
	res, err := socksDo(ctx, topo.C, socksRequest{proxy: acctProxy, user: u.Name, pass: u.Password,
		target: net.JoinHostPort(egSvc, strconv.Itoa(acctTCPBase))})
	if err != nil || res.reply != 2 {
		t.Errorf("CONNECT over quota: reply %d, %v; want 0x02", res.reply, err)
	}
	if res.conn != nil {
		res.conn.Close()
	}
	res, err = socksDo(ctx, topo.C, socksRequest{proxy: acctProxy, user: u.Name, pass: u.Password, cmd: 3,
		target: netip.AddrPortFrom(netip.IPv4Unspecified(), 9).String()})
	if err != nil || res.reply != 2 {
		t.Errorf("UDP ASSOCIATE over quota: reply %d, %v; want 0x02", res.reply, err)
	}
	if res.conn != nil {
		res.conn.Close()
	}
	// curl, an independent client, says the same.
	r := curlIn(t, topo.C, curlOpts{proxy: "socks5h://" + u.Name + ":" + u.Password + "@" + acctProxy}, "http://"+egTarget+"/")
	if r.exit == 0 {
		t.Errorf("curl over quota succeeded: %+v", r)
	}
	// The HTTP proxy on the same listener: 403 "quota exceeded", for a
	// forwarded request and for CONNECT.
	for _, extra := range [][]string{nil, {"-p"}} {
		args := append([]string{"netns", "exec", topo.C, "curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}",
			"-x", "http://" + u.Name + ":" + u.Password + "@" + acctProxy}, extra...)
		out, errOut, _ := nstest.Run(ctx, nil, "ip", append(args, "http://"+egTarget+"/")...)
		if !strings.Contains(out+errOut, "403") || (extra == nil && !strings.Contains(out, "quota exceeded")) {
			t.Errorf("curl -x http %v over quota: %q %q, want 403 quota exceeded", extra, out, errOut)
		}
	}
	if _, err := acctTCP(ctx, topo.C, other, acctTCPBase+1, 10, 1000); err != nil {
		t.Errorf("another user: %v", err)
	}
	if n := od.countMsg("quota exceeded: new flows refused and running ones closed until the period ends"); n != 1 {
		t.Errorf("%d quota warnings, want 1", n)
	}
	metrics, err := httpGetIn(topo.P, "http://"+egMetrics+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if want := `ifsocks_quota_exceeded{user="` + u.Name + `"} 1`; !strings.Contains(metrics, want+"\n") {
		t.Errorf("metrics lack %s", want)
	}
	quotaFlows := false
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "ifsocks_flows_total{") && strings.Contains(line, `outcome="quota"`) && strings.Contains(line, `user="`+u.Name+`"`) {
			quotaFlows = true
		}
	}
	if !quotaFlows {
		t.Errorf("metrics lack ifsocks_flows_total with outcome quota for %s", u.Name)
	}
}
