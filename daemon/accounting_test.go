package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/usagedb"
	"go.uber.org/zap/zaptest/observer"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *testClock) edit(o *Options) { o.Now = c.now }
func usageOf(tb testing.TB, maddr string) map[string]accounting.Usage {
	tb.Helper()
	var us []accounting.Usage
	if err := json.Unmarshal([]byte(scrape(tb, "http://"+maddr+"/usage")), &us); err != nil {
		tb.Fatal(err)
	}
	out := map[string]accounting.Usage{}
	for _, u := range us {
		out[u.User] = u
	}
	return out
}

// quotaConfig is a daemon with accounting in dir and alice's daily quota.
func quotaConfig(addr, maddr, dir, quota string) string {
	return accountingHead(addr, maddr, filepath.Join(dir, "usage.db")) + fmt.Sprintf(`[[users]]
name = "alice"
password = "alice-pw"
quota = %s
quota_period = "day"
[[users]]
name = "bob"
password = "bob-pw"
`, quota)
}

// accountingHead is the start of a test daemon's config: one listen
// address, no destination policy (the targets are on loopback), metrics
// on maddr and accounting in db, flushed every 200 ms.
func accountingHead(listen, maddr, db string) string {
	return fmt.Sprintf(`[server]
listen = [%q]
deny = []
deny_own_addresses = false
[metrics]
listen = %q
[accounting]
path = %q
flush_interval = "200ms"
`, listen, maddr, db)
}

// TestQuotaPeriodAndReload: over quota a running flow is closed (outcome
// quota) and new ones get 0x02, other users are untouched; a reload
// raising the quota lets the user in at once, and so does the next period
// on a clock the test moves, without a reload.
func TestQuotaPeriodAndReload(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	maddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	dir := t.TempDir()
	clk := &testClock{t: time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC)}
	d := startFileDaemonWith(t, quotaConfig(addr, maddr, dir, "100000"), clk.edit)

	bob, err := socksDial(t, addr, "bob", "bob-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	c, err := socksDial(t, addr, "alice", "alice-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, strings.Repeat("q", 60000)) // 120 000 bytes both ways
	// The running flow is cut at a flush; reads end.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var ne net.Error
	if _, err := io.Copy(io.Discard, c); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("alice's flow over quota not closed: %v", err)
	}
	d.waitLog(t, "quota exceeded: new flows refused and running ones closed until the period ends")
	waitFlow(t, d.logs, "alice", "quota", 1)
	if _, err := socksDial(t, addr, "alice", "alice-pw", target); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("alice over quota: dial error %v, want connection not allowed (0x02)", err)
	}
	echo(t, bob, "bob is not limited")
	u := usageOf(t, maddr)["alice"]
	if u.Up != 60000 || u.Down != 60000 || u.Quota != 100000 || u.PercentUsed < 100 || u.PeriodStart != "2026-12-03" {
		t.Errorf("/usage alice = %+v", u)
	}
	if m := scrape(t, "http://"+maddr+"/metrics"); !strings.Contains(m, `ifsocks_quota_exceeded{user="alice"} 1`+"\n") {
		t.Error("ifsocks_quota_exceeded{user=alice} is not 1")
	}

	// A reload raising the quota: in at once.
	d.reloadWith(t, quotaConfig(addr, maddr, dir, "200000"))
	c2, err := socksDial(t, addr, "alice", "alice-pw", target)
	if err != nil {
		t.Fatalf("alice after the quota was raised: %v", err)
	}
	echo(t, c2, strings.Repeat("r", 50000)) // 220 000 in all: over again
	c2.Close()
	waitDialRefused(t, addr, "alice", "alice-pw", target)
	if n := d.logs.FilterMessageSnippet("quota exceeded").Len(); n != 1 {
		t.Errorf("%d quota warnings, want 1 in this period", n)
	}

	// Midnight on the daemon's clock: the next flush opens the new period.
	clk.set(time.Date(2026, 12, 4, 0, 0, 1, 0, time.UTC))
	deadline := time.Now().Add(20 * time.Second)
	for {
		c3, err := socksDial(t, addr, "alice", "alice-pw", target)
		if err == nil {
			echo(t, c3, "new day")
			c3.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice still refused in the next period: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := scrape(t, "http://"+maddr+"/metrics"); !strings.Contains(m, `ifsocks_quota_exceeded{user="alice"} 0`+"\n") {
		t.Error("ifsocks_quota_exceeded{user=alice} is not 0 in the new period")
	}
}

// waitDialRefused waits (bounded) until the flows of user (password pw;
// both empty on a listener without authentication) are refused.
func waitDialRefused(t *testing.T, addr, user, pw, target string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := socksDial(t, addr, user, pw, target)
		if err != nil {
			if !strings.Contains(err.Error(), "not allowed") {
				t.Fatalf("dial error %v, want connection not allowed (0x02)", err)
			}
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("flows of %q never refused after going over the quota", user)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFlow waits until user has at least n flow lines with outcome.
func waitFlow(t *testing.T, logs *observer.ObservedLogs, user, outcome string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := logs.Filter(func(e observer.LoggedEntry) bool {
			m := e.ContextMap()
			return e.Message == "flow" && m["user"] == user && m["outcome"] == outcome
		}).Len()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flow lines of %s with outcome %s, want %d; logs %v", got, user, outcome, n, messages(logs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListenerQuota: flows of a no-auth listener are counted under its
// name and capped by its quota; flows on [server] listen without
// authentication are counted under "-", without a quota.
func TestListenerQuota(t *testing.T) {
	plain := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	named := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	maddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	text := accountingHead(plain, maddr, filepath.Join(t.TempDir(), "usage.db")) + fmt.Sprintf(`[[listeners]]
address = %q
name = "office"
auth = "none"
quota = 30000
quota_period = "week"
`, named)
	d := startFileDaemonWith(t, text, nil)
	c, err := socksDial(t, named, "", "", target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, strings.Repeat("o", 20000)) // 40 000 of 30 000
	c.Close()
	p, err := socksDial(t, plain, "", "", target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, p, strings.Repeat("p", 1234))
	p.Close()
	waitDialRefused(t, named, "", "", target)
	waitFlow(t, d.logs, "", "quota", 1)
	// The relay counts a write once it has returned, which on a loaded
	// machine can be a moment after the client has read the bytes (and
	// the refused dial's flow line, which ended the wait above, need not
	// come after the counts): wait (bounded) for both echoes to be
	// counted.
	u := usageOf(t, maddr)
	for end := time.Now().Add(10 * time.Second); (u["-"].Down < 1234 || u["office"].Down < 20000) && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
		u = usageOf(t, maddr)
	}
	if o := u["office"]; o.Up < 20000 || o.Down < 20000 || o.Quota != 30000 || o.Period != "week" {
		t.Errorf("/usage office = %+v", o)
	}
	if n := u["-"]; n.Up != 1234 || n.Down != 1234 || n.Flows != 1 || n.Quota != 0 {
		t.Errorf("/usage - = %+v, want 1234 each way, 1 flow, no quota", n)
	}
	// Still open for [server] listen.
	p, err = socksDial(t, plain, "", "", target)
	if err != nil {
		t.Fatalf("[server] listen refused: %v", err)
	}
	p.Close()
}

// TestFlushOnReloadAndStop: with a flush interval far longer than the
// test, a reload and the stop still write every byte counted.
func TestFlushOnReloadAndStop(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	db := filepath.Join(t.TempDir(), "usage.db")
	text := reloadConfig(t, []string{addr}, []string{"flo"}, "") +
		fmt.Sprintf("[accounting]\npath = %q\nflush_interval = \"1h\"\n", db)
	d := startFileDaemonWith(t, text, nil)
	stored := func() accounting.Row {
		t.Helper()
		s, err := usagedb.OpenReadOnly(db)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		rows, err := s.Load("")
		if err != nil {
			t.Fatal(err)
		}
		var sum accounting.Row
		for _, r := range rows {
			if r.Key == "flo" {
				sum.Up, sum.Down, sum.Flows = sum.Up+r.Up, sum.Down+r.Down, sum.Flows+r.Flows
			}
		}
		return sum
	}
	c, err := socksDial(t, addr, "flo", "flo-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, strings.Repeat("f", 5000))
	if r := stored(); r.Up != 0 {
		t.Fatalf("written before any flush: %+v", r)
	}
	d.reloadWith(t, text)
	if r := stored(); r.Up != 5000 || r.Down != 5000 || r.Flows != 1 {
		t.Errorf("after the reload the file has %+v, want 5000 each way, 1 flow", r)
	}
	echo(t, c, strings.Repeat("g", 700)) // the flow runs on
	c.Close()
	if _, err := d.stop(t); err != nil {
		t.Fatal(err)
	}
	if r := stored(); r.Up != 5700 || r.Down != 5700 || r.Flows != 1 {
		t.Errorf("after the stop the file has %+v, want 5700 each way, 1 flow", r)
	}
}

// TestServeWithoutAccounting: with on_error = "serve", a database that
// cannot be opened leaves the daemon serving, without accounting or
// quotas, and saying so again at each interval (a minute in service).
func TestServeWithoutAccounting(t *testing.T) {
	old := accountingOffWarn
	accountingOffWarn = 100 * time.Millisecond
	t.Cleanup(func() { accountingOffWarn = old })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	maddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	target := echoServer(t, "127.0.0.1:0")
	db := filepath.Join(t.TempDir(), "no", "such", "dir", "usage.db")
	text := reloadConfig(t, []string{addr}, []string{"sam"}, "") +
		fmt.Sprintf("[metrics]\nlisten = %q\n[accounting]\npath = %q\non_error = \"serve\"\n[[users]]\nname = \"q\"\npassword = \"q-pw\"\nquota = 1\n", maddr, db)
	d := startFileDaemonWith(t, text, nil)
	// The quota of 1 byte is not enforced: there is no accounting.
	c, err := socksDial(t, addr, "q", "q-pw", target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, "not counted")
	c.Close()
	const repeat = "serving WITHOUT accounting or quotas: the database could not be opened at start; fix it and restart"
	waitFor := time.Now().Add(20 * time.Second)
	for d.logs.FilterMessage(repeat).Len() < 2 {
		if time.Now().After(waitFor) {
			t.Fatalf("%d repeated warnings, want 2 or more", d.logs.FilterMessage(repeat).Len())
		}
		time.Sleep(20 * time.Millisecond)
	}
	first := d.logs.FilterMessageSnippet("serving WITHOUT accounting").All()[0]
	if msg, _ := first.ContextMap()["error"].(string); !strings.Contains(msg, db) {
		t.Errorf("first warning %q does not name %s", msg, db)
	}
	resp, err := http.Get("http://" + maddr + "/usage")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/usage without accounting: %s, want 404", resp.Status)
	}
}
