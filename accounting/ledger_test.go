package accounting_test

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/usagedb"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

type hooks struct {
	mu    sync.Mutex
	over  map[string]int
	state map[string]bool
}

func newLedger(t *testing.T, path string, clk *clock, h *hooks) (*accounting.Ledger, *observer.ObservedLogs) {
	t.Helper()
	db, err := usagedb.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	opts := accounting.Options{Interval: time.Hour, Now: clk.now}
	if h != nil {
		h.over, h.state = map[string]int{}, map[string]bool{}
		opts.Hooks = accounting.Hooks{
			Over:  func(k string) { h.mu.Lock(); h.over[k]++; h.mu.Unlock() },
			State: func(k string, o bool) { h.mu.Lock(); h.state[k] = o; h.mu.Unlock() },
		}
	}
	l, err := accounting.New(zap.New(core), db, opts)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return l, logs
}

func TestLedgerTotalsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.db")
	clk := &clock{t: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	l, _ := newLedger(t, path, clk, nil)
	a := l.Counter("alice")
	if a != l.Counter("alice") {
		t.Fatal("Counter returned two counters for one key")
	}
	for range 3 {
		if err := a.Check(); err != nil {
			t.Fatal(err)
		}
		a.Started()
	}
	a.Up.Add(100)
	a.Down.Add(1000)
	l.Counter("-").AddUp(7)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	a.Up.Add(1) // counted after the last flush: Close must write it
	clk.set(clk.now().Add(24 * time.Hour))
	a.Down.Add(5)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, _ = newLedger(t, path, clk, nil)
	defer l.Close()
	got := map[string]accounting.Usage{}
	for _, u := range l.Usage(nil) {
		got[u.User] = u
	}
	if u := got["alice"]; u.Up != 101 || u.Down != 1005 || u.Flows != 3 || u.PeriodStart != "2026-12-01" || u.Period != "month" {
		t.Errorf("alice = %+v, want 101 up, 1005 down, 3 flows in the month from 2026-12-01", u)
	}
	if u := got["-"]; u.Up != 7 {
		t.Errorf("- = %+v, want 7 up", u)
	}
	day := accounting.Day
	for _, u := range l.Usage(&day) {
		if u.User == "alice" && (u.Up != 1 || u.Down != 5 || u.PeriodStart != "2026-12-04") {
			// The byte counted before midnight but flushed after it
			// is booked on the day of the flush.
			t.Errorf("alice today = %+v, want 1 up, 5 down on 2026-12-04", u)
		}
	}
}

func TestLedgerQuota(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.db")
	clk := &clock{t: time.Date(2026, 12, 3, 23, 59, 0, 0, time.UTC)}
	h := &hooks{}
	l, logs := newLedger(t, path, clk, h)
	defer l.Close()
	l.SetQuotas(map[string]accounting.Quota{"alice": {Bytes: 1000, Period: accounting.Day}})
	a, b := l.Counter("alice"), l.Counter("bob")
	if err := a.Check(); err != nil {
		t.Fatalf("Check under quota: %v", err)
	}
	a.Down.Add(999)
	if a.Over() {
		t.Fatal("Over at 999 of 1000")
	}
	a.Up.Add(1)
	// Refused at once, before any flush.
	if err := a.Check(); !errors.Is(err, accounting.ErrQuotaExceeded) {
		t.Fatalf("Check at the quota = %v, want ErrQuotaExceeded", err)
	}
	b.Down.Add(1 << 40)
	if err := b.Check(); err != nil {
		t.Errorf("bob has no quota, Check = %v", err)
	}
	for range 3 {
		l.Flush()
	}
	if h.over["alice"] != 3 || h.over["bob"] != 0 || !h.state["alice"] {
		t.Errorf("Over calls %v, states %v; want alice over at each of 3 flushes", h.over, h.state)
	}
	if n := logs.FilterMessageSnippet("quota exceeded").Len(); n != 1 {
		t.Errorf("%d quota warnings, want 1 per period", n)
	}
	if err := a.Check(); err == nil {
		t.Error("Check after flushes succeeded, want refused")
	}

	// A reload raising the quota lets alice in at once.
	l.SetQuotas(map[string]accounting.Quota{"alice": {Bytes: 2000, Period: accounting.Day}})
	if err := a.Check(); err != nil {
		t.Errorf("Check after raising the quota: %v", err)
	}
	a.Down.Add(1000)
	l.Flush()
	if !a.Over() || h.state["alice"] != true {
		t.Fatal("not over at 2000 of 2000")
	}
	// Midnight: a new day, a new period. No reload.
	clk.set(clk.now().Add(2 * time.Minute))
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := a.Check(); err != nil {
		t.Errorf("Check in the next period: %v", err)
	}
	if h.state["alice"] {
		t.Error("quota state still over in the next period")
	}
	a.Down.Add(5000)
	l.Flush()
	if n := logs.FilterMessageSnippet("quota exceeded").Len(); n != 2 {
		t.Errorf("%d quota warnings after going over in a second period, want 2", n)
	}
	// A removed quota frees the key.
	l.SetQuotas(nil)
	if err := a.Check(); err != nil || h.state["alice"] {
		t.Errorf("after removing the quota: Check %v, over %v", err, h.state["alice"])
	}
}

// TestLedgerAnswerQuota: a quota from an auth backend's answer is enforced
// like the file's, survives a reload's SetQuotas, yields to a file quota
// of the same key, and goes when an answer has none.
func TestLedgerAnswerQuota(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	h := &hooks{}
	l, _ := newLedger(t, filepath.Join(t.TempDir(), "usage.db"), clk, h)
	defer l.Close()
	a := l.Counter("hookuser")
	l.SetAnswerQuota("hookuser", accounting.Quota{Bytes: 1000, Period: accounting.Day})
	a.Down.Add(1000)
	if err := a.Check(); !errors.Is(err, accounting.ErrQuotaExceeded) {
		t.Fatalf("Check at the answered quota = %v, want ErrQuotaExceeded", err)
	}
	l.Flush()
	if h.over["hookuser"] != 1 {
		t.Errorf("Over calls %v, want hookuser cut at the flush", h.over)
	}
	l.SetQuotas(nil) // a reload of a file without quotas
	if err := a.Check(); err == nil {
		t.Error("a reload dropped the answered quota")
	}
	l.SetQuotas(map[string]accounting.Quota{"hookuser": {Bytes: 5000, Period: accounting.Day}})
	if err := a.Check(); err != nil {
		t.Errorf("the file's larger quota should win: %v", err)
	}
	l.SetQuotas(nil)
	l.SetAnswerQuota("hookuser", accounting.Quota{Bytes: 2000, Period: accounting.Day})
	if err := a.Check(); err != nil {
		t.Errorf("a raised answered quota: %v", err)
	}
	a.Down.Add(1000)
	if err := a.Check(); err == nil {
		t.Error("not refused at 2000 of an answered 2000")
	}
	l.SetAnswerQuota("hookuser", accounting.Quota{})
	if err := a.Check(); err != nil {
		t.Errorf("an answer without a quota: %v", err)
	}
}

// TestCounterNoAlloc: the flow path allocates nothing.
func TestCounterNoAlloc(t *testing.T) {
	clk := &clock{t: time.Now()}
	l, _ := newLedger(t, filepath.Join(t.TempDir(), "u.db"), clk, nil)
	defer l.Close()
	l.SetQuotas(map[string]accounting.Quota{"alice": {Bytes: 1 << 40}})
	l.Counter("alice")
	n := testing.AllocsPerRun(1000, func() {
		c := l.Counter("alice")
		if c.Check() == nil {
			c.Started()
			c.Up.Add(10)
			c.AddDown(10)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per flow, want 0", n)
	}
}
