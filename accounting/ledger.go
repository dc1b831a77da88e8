package accounting

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Row is one key's traffic on one UTC day: the unit the Store keeps.
type Row struct {
	Key   string
	Day   string // "2006-01-02"
	Up    int64
	Down  int64
	Flows int64
}

func (r *Row) add(o Row) {
	r.Up += o.Up
	r.Down += o.Down
	r.Flows += o.Flows
}

// Store keeps the rows. Add is called once per flush with that flush's
// increments and must apply all of them or none (one transaction);
// Load returns every row from day since on.
type Store interface {
	Add(rows []Row) error
	Load(since string) ([]Row, error)
	Close() error
}

// Hooks tell the daemon what the ledger decides; any may be nil.
type Hooks struct {
	// Over is called at each flush for every key over its quota, so
	// that the flows still running are cut.
	Over func(key string)
	// State reports each key with a quota at each flush: over or not.
	State func(key string, over bool)
	// WriteFailed counts a flush the store refused.
	WriteFailed func()
}

// Options configure a Ledger.
type Options struct {
	Interval time.Duration
	Hooks    Hooks
	// Now is the clock; nil means time.Now. Tests move it across a
	// period boundary.
	Now func() time.Time
}

// keep is how many days of totals the ledger holds in memory: enough for
// the longest period (a month from its reset day) plus a margin.
const keep = 40

// retryWarn is how often a failing store is reported while it fails.
const retryWarn = time.Minute

// Ledger owns the counters and the per-day totals. Counter is safe from any
// goroutine; Flush and Run's flushes are serialised.
type Ledger struct {
	log   *zap.Logger
	store Store
	opts  Options

	mu       sync.RWMutex
	counters map[string]*Counter
	quotas   map[string]Quota // from the file: replaced by SetQuotas
	// answered holds the quotas auth backends answered for their users.
	// A reload keeps them: a backend is asked again when its cache ends,
	// and the answer then replaces its user's quota.
	answered map[string]Quota

	// Guarded by flushMu, taken before mu.
	flushMu sync.Mutex
	days    map[string]map[string]*Row // key, day: totals, flushed or not
	pending map[string]map[string]*Row // key, day: increments the store lacks
	warned  map[string]time.Time       // key: period start of the last quota warning
	failing time.Time                  // when the store started failing; zero when fine
	lastErr time.Time                  // when a failure was last reported
	closed  bool
}

// New loads the recent totals from store and returns a ledger that
// writes to it.
func New(log *zap.Logger, store Store, opts Options) (*Ledger, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Ledger{
		log:      log,
		store:    store,
		opts:     opts,
		counters: make(map[string]*Counter),
		quotas:   make(map[string]Quota),
		answered: make(map[string]Quota),
		days:     make(map[string]map[string]*Row),
		pending:  make(map[string]map[string]*Row),
		warned:   make(map[string]time.Time),
	}
	rows, err := store.Load(opts.Now().UTC().AddDate(0, 0, -keep).Format(dayLayout))
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		addRow(l.days, r)
	}
	return l, nil
}

func addRow(m map[string]map[string]*Row, r Row) {
	days := m[r.Key]
	if days == nil {
		days = make(map[string]*Row)
		m[r.Key] = days
	}
	if cur := days[r.Day]; cur != nil {
		cur.add(r)
		return
	}
	days[r.Day] = &Row{Key: r.Key, Day: r.Day, Up: r.Up, Down: r.Down, Flows: r.Flows}
}

// Counter returns key's counter, creating it at the first flow of a key:
// looking it up costs a read lock and allocates nothing.
func (l *Ledger) Counter(key string) *Counter {
	if l == nil {
		return nil
	}
	l.mu.RLock()
	c := l.counters[key]
	l.mu.RUnlock()
	if c != nil {
		return c
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c = l.counters[key]; c == nil {
		c = &Counter{key: key}
		l.counters[key] = c
	}
	return c
}

// SetQuotas puts quotas in force at once (at start and on reload): a key
// whose quota a reload raises can start flows again immediately, and one
// it lowers is refused and its flows cut at the next flush.
func (l *Ledger) SetQuotas(q map[string]Quota) {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	now := l.opts.Now()
	for key := range q {
		l.Counter(key)
	}
	l.mu.Lock()
	l.quotas = maps.Clone(q)
	l.mu.Unlock()
	l.applyQuotas(now, false)
}

// SetAnswerQuota puts in force the quota an auth backend answered for key
// (Bytes 0: none). A quota the file gives key wins; a [[users]] name is
// never asked of a backend. An unchanged answer costs a map lookup.
func (l *Ledger) SetAnswerQuota(key string, q Quota) {
	if l == nil {
		return
	}
	l.mu.RLock()
	cur, had := l.answered[key]
	l.mu.RUnlock()
	if (had && cur == q) || (!had && q.Bytes <= 0) {
		return
	}
	l.Counter(key)
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	if q.Bytes > 0 {
		l.answered[key] = q
	} else {
		delete(l.answered, key)
	}
	l.mu.Unlock()
	l.applyQuotas(l.opts.Now(), false)
}

// quotaOf is key's quota in force: the file's, else a backend's answer.
// Called with mu held.
func (l *Ledger) quotaOf(key string) (Quota, bool) {
	if q, ok := l.quotas[key]; ok {
		return q, true
	}
	q, ok := l.answered[key]
	return q, ok
}

// Run flushes every interval until ctx ends. It does not flush at the
// end: the owner calls Close once the flows have stopped.
func (l *Ledger) Run(ctx context.Context) {
	t := time.NewTicker(l.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Flush moves the counts into the day totals, writes the increments to
// the store in one batch, and applies the quotas. A store error keeps the
// increments in memory for the next flush. It returns the store's error.
func (l *Ledger) Flush() error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if l.closed {
		return nil
	}
	now := l.opts.Now()
	l.collect(now)
	err := l.write(now)
	l.applyQuotas(now, true)
	l.prune(now)
	return err
}

// Close flushes a last time and closes the store.
func (l *Ledger) Close() error {
	err := l.Flush()
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.closed = true
	if cerr := l.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// collect takes what the counters have counted since the last flush and
// books it on now's day.
func (l *Ledger) collect(now time.Time) {
	day := now.UTC().Format(dayLayout)
	l.mu.RLock()
	defer l.mu.RUnlock()
	for key, c := range l.counters {
		r := Row{Key: key, Day: day, Up: c.Up.Swap(0), Down: c.Down.Swap(0), Flows: c.flows.Swap(0)}
		if r.Up == 0 && r.Down == 0 && r.Flows == 0 {
			continue
		}
		// used keeps the taken bytes until applyQuotas recounts the
		// period, so that Over does not dip in between.
		c.used.Add(r.Up + r.Down)
		addRow(l.days, r)
		addRow(l.pending, r)
	}
}

func (l *Ledger) write(now time.Time) error {
	if len(l.pending) == 0 {
		return nil
	}
	var rows []Row
	for _, days := range l.pending {
		for _, r := range days {
			rows = append(rows, *r)
		}
	}
	err := l.store.Add(rows)
	if err == nil {
		clear(l.pending)
		if !l.failing.IsZero() {
			l.log.Info("accounting database writable again; counts kept in memory are written",
				zap.Duration("failed_for", now.Sub(l.failing)))
			l.failing = time.Time{}
		}
		return nil
	}
	if l.opts.Hooks.WriteFailed != nil {
		l.opts.Hooks.WriteFailed()
	}
	if l.failing.IsZero() {
		l.failing = now
	}
	if l.lastErr.IsZero() || now.Sub(l.lastErr) >= retryWarn || now.Before(l.lastErr) {
		l.lastErr = now
		l.log.Warn("cannot write the accounting database; serving on, counts kept in memory and retried at each flush",
			zap.Error(err), zap.Int("rows_pending", len(rows)), zap.Duration("failing_for", now.Sub(l.failing)))
	}
	return err
}

// applyQuotas recounts each key's use of its current period from the day
// totals, and with cut set acts on the keys over quota: one warning per
// key and period, and Over for their running flows.
func (l *Ledger) applyQuotas(now time.Time, cut bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for key, c := range l.counters {
		q, ok := l.quotaOf(key)
		if !ok || q.Bytes <= 0 {
			had := c.quota.Swap(0) > 0
			if (ok || had) && l.opts.Hooks.State != nil {
				l.opts.Hooks.State(key, false)
			}
			continue
		}
		start := q.Start(now)
		c.used.Store(l.sum(key, start.Format(dayLayout), q.End(now).Format(dayLayout)).total())
		c.quota.Store(q.Bytes)
		over := c.Over()
		if l.opts.Hooks.State != nil {
			l.opts.Hooks.State(key, over)
		}
		if !over || !cut {
			continue
		}
		if l.warned[key] != start {
			l.warned[key] = start
			l.log.Warn("quota exceeded: new flows refused and running ones closed until the period ends",
				zap.String("user", key), zap.Int64("quota", q.Bytes), zap.Int64("used", c.used.Load()),
				zap.Stringer("period", q.Period), zap.Time("until", q.End(now)))
		}
		if l.opts.Hooks.Over != nil {
			l.opts.Hooks.Over(key)
		}
	}
}

func (r Row) total() int64 { return r.Up + r.Down }

// sum adds key's day totals in [from, to).
func (l *Ledger) sum(key, from, to string) Row {
	out := Row{Key: key, Day: from}
	for day, r := range l.days[key] {
		if day >= from && day < to {
			out.add(*r)
		}
	}
	return out
}

// prune forgets days older than any period needs; the store keeps them.
func (l *Ledger) prune(now time.Time) {
	oldest := now.UTC().AddDate(0, 0, -keep).Format(dayLayout)
	for key, days := range l.days {
		for day := range days {
			if day < oldest {
				delete(days, day)
			}
		}
		if len(days) == 0 {
			delete(l.days, key)
		}
	}
}

// Usage reports each key's traffic in its current period (period nil: the
// key's quota period, month without one) or in the current period of the
// given length, counting what has not been flushed yet.
func (l *Ledger) Usage(period *Period) []Usage {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	now := l.opts.Now()
	l.mu.RLock()
	defer l.mu.RUnlock()
	keys := map[string]bool{}
	for k := range l.days {
		keys[k] = true
	}
	for k := range l.counters {
		keys[k] = true
	}
	var out []Usage
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		q, hasQuota := l.quotas[key]
		u := usageOf(key, q, hasQuota, period, now, func(from, to string) Row { return l.sum(key, from, to) })
		if c := l.counters[key]; c != nil {
			u.Up += c.Up.Load()
			u.Down += c.Down.Load()
			u.Flows += c.flows.Load()
			u.percent()
		}
		if u.Up+u.Down+u.Flows > 0 || u.Quota > 0 {
			out = append(out, u)
		}
	}
	return out
}
