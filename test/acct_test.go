//go:build linux

package test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const acctUsers = 10

// acctTraffic runs, for every user at once, two SOCKS5 TCP flows (one
// bulk, one small), one HTTP CONNECT tunnel and one UDP association of
// echoed datagrams; sizes differ per
// user and per round, so that a total booked to the wrong user or lost
// shows.
func acctTraffic(t *testing.T, topo *topology, round int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4*acctUsers)
	for i := range acctUsers {
		u := acctUser(i)
		wg.Go(func() {
			down := 400_000*(i+1) + 1237*round + i
			got, err := acctTCP(ctx, topo.C, u, acctTCPBase+i, 20_000*(i+1)+round, down)
			if err == nil && got != int64(down) {
				err = fmt.Errorf("got %d of %d bytes", got, down)
			}
			if err != nil {
				errc <- fmt.Errorf("%s bulk: %w", u.Name, err)
			}
		})
		wg.Go(func() {
			if _, err := acctTCP(ctx, topo.C, u, acctTCPBase+i, 100+i, 300+round); err != nil {
				errc <- fmt.Errorf("%s small: %w", u.Name, err)
			}
		})
		wg.Go(func() {
			down := 50_000 + 333*i + round
			got, err := acctHTTPConnect(ctx, topo.C, u, acctTCPBase+i, 1000+i, down)
			if err == nil && got != int64(down) {
				err = fmt.Errorf("got %d of %d bytes", got, down)
			}
			if err != nil {
				errc <- fmt.Errorf("%s HTTP CONNECT: %w", u.Name, err)
			}
		})
		wg.Go(func() {
			if err := acctUDP(topo.C, u, acctUDPBase+i, 8+round, 200+17*i); err != nil {
				errc <- fmt.Errorf("%s udp: %w", u.Name, err)
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// wantTotals compares the database, read by the sqlite3 shell, with what
// the upstreams counted, and the flows with those the test ran.
func wantTotals(t *testing.T, dbPath string, up *acctUpstream, flows int64) {
	t.Helper()
	rows := sqliteTotals(t, dbPath)
	for i := range acctUsers {
		name := acctUser(i).Name
		wantUp, wantDown := up.total(i)
		got := rows[name]
		if got.up != wantUp || got.down != wantDown || got.flows != flows {
			t.Errorf("%s: database %d up %d down %d flows; upstreams counted %d up %d down, %d flows run",
				name, got.up, got.down, got.flows, wantUp, wantDown, flows)
		}
	}
}

// TestAccountingTotals: ten users' mixed TCP and UDP traffic is booked
// exactly as the upstreams counted it, in the database the sqlite3 shell
// reads; a SIGTERM restart keeps it, a reload in the middle of the traffic
// loses nothing, and `ifsocks usage` and /usage say the same while the
// daemon runs under load.
func TestAccountingTotals(t *testing.T) {
	topo := newEgressTopologyAs(t, acctPrefix)
	up := startAcctUpstream(t, topo, acctUsers)
	db := filepath.Join(t.TempDir(), "usage.db")
	cfg := acctConfig(db, acctUsers, "300ms", "", nil)

	od := startAcctDaemon(t, topo, cfg)
	acctTraffic(t, topo, 1)
	od.stopTerm(t)
	wantTotals(t, db, up, 4)

	// Restarted on the same file; traffic with a reload in its middle
	// (the reload also changes a user's settings).
	od = startAcctDaemon(t, topo, cfg)
	var wg sync.WaitGroup
	wg.Go(func() { acctTraffic(t, topo, 2) })
	time.Sleep(200 * time.Millisecond)
	od.writeConfig(t, acctConfig(db, acctUsers, "300ms", "", func(i int) string {
		if i == 3 {
			return "max_connections = 50\n"
		}
		return ""
	}))
	od.mustReload(t)
	// Read while traffic runs: both readers work against the live file.
	_ = sqliteTotals(t, db)
	during := usageCmd(t, od.bin, cfg)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Everything has ended: after one more flush the live totals, the
	// file and the report agree with the upstreams.
	time.Sleep(time.Second)
	live := liveUsage(t, topo)
	report := usageCmd(t, od.bin, cfg)
	for i := range acctUsers {
		name := acctUser(i).Name
		wantUp, wantDown := up.total(i)
		if l := live[name]; l.Up != wantUp || l.Down != wantDown || l.Flows != 8 {
			t.Errorf("/usage %s = %+v, want %d up %d down 8 flows", name, l, wantUp, wantDown)
		}
		if r := report[name]; r.Up != wantUp || r.Down != wantDown || r.Flows != 8 || r.Period != "month" {
			t.Errorf("ifsocks usage %s = %+v, want %d up %d down 8 flows this month", name, r, wantUp, wantDown)
		}
		if d := during[name]; d.Up > wantUp || d.Down > wantDown || d.Flows < 4 {
			t.Errorf("ifsocks usage under load %s = %+v: more than the end totals, or fewer flows than the first run's", name, d)
		}
	}
	od.stopTerm(t)
	wantTotals(t, db, up, 8)
	if n := strings.Count(od.logs.String(), "cannot write the accounting database"); n > 0 {
		t.Errorf("%d write failures logged", n)
	}
}

// TestAccountingSIGKILL: a daemon killed mid-transfer loses at most one
// flush interval of traffic from the totals. The user is paced, so that an
// interval is a known number of bytes.
func TestAccountingSIGKILL(t *testing.T) {
	topo := newEgressTopologyAs(t, acctPrefix)
	startAcctUpstream(t, topo, 1)
	db := filepath.Join(t.TempDir(), "usage.db")
	const (
		rate  = 4 << 20 // bytes per second
		flush = time.Second
	)
	cfg := acctConfig(db, 1, flush.String(), "", func(int) string { return fmt.Sprintf("rate_limit = %d\n", rate) })
	od := startAcctDaemon(t, topo, cfg)
	u := acctUser(0)
	var (
		received int64
		mu       sync.Mutex
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := acctDialer(topo.C, u).DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", egSvc, acctTCPBase))
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "%d 0\n", 1<<30)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			received += int64(n)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	time.Sleep(3500 * time.Millisecond)
	od.sigkill(t)
	<-done
	mu.Lock()
	got := received
	mu.Unlock()
	booked := sqliteTotals(t, db)[u.Name].down
	// What the client got passed the relay, which counted it first; at
	// most the last interval (plus one burst of the limiter in flight)
	// may be missing from the file.
	loss := got - booked
	bound := int64(rate*flush.Seconds()) + int64(rate/10) + 256<<10
	t.Logf("client received %d bytes, database has %d: %d lost (bound %d)", got, booked, loss, bound)
	if got < 2*rate {
		t.Fatalf("only %d bytes moved in 3.5s at %d/s: the test measured nothing", got, rate)
	}
	if loss > bound || booked > got+int64(rate/10)+256<<10 {
		t.Errorf("database %d bytes, client %d: loss %d outside [0, %d]", booked, got, loss, bound)
	}
}
