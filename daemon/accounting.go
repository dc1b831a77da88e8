package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/config"
	"github.com/ifsocks/ifsocks/usagedb"
	"go.uber.org/zap"
)

// accountingOffWarn is how often a daemon serving without its accounting
// database (on_error = "serve") says so. A variable for tests only.
var accountingOffWarn = time.Minute

// openAccounting opens the usage database of cfg and loads its ledger.
// It returns a nil ledger when accounting is off, or when the database
// cannot be opened and on_error is "serve"; otherwise the failure, which
// names the file.
func (d *daemon) openAccounting(cfg *config.Config) (*accounting.Ledger, error) {
	a := cfg.Accounting
	if a.Path == "" {
		return nil, nil
	}
	l, err := d.newLedger(a)
	if err == nil {
		l.SetQuotas(Quotas(cfg))
		d.log.Info("accounting", zap.String("path", a.Path), zap.Duration("flush_interval", a.FlushInterval))
		return l, nil
	}
	if a.OnError != config.OnErrorServe {
		return nil, err
	}
	d.accountingErr = err
	d.log.Warn("serving WITHOUT accounting or quotas: the database cannot be opened and accounting.on_error is serve", zap.Error(err))
	return nil, nil
}

func (d *daemon) newLedger(a config.Accounting) (*accounting.Ledger, error) {
	db, err := usagedb.Open(a.Path)
	if err != nil {
		return nil, err
	}
	l, err := accounting.New(d.log, db, accounting.Options{
		Interval: a.FlushInterval,
		Hooks: accounting.Hooks{
			Over:        d.quotaOver,
			State:       d.metrics.QuotaExceeded,
			WriteFailed: d.metrics.AccountingWriteFailed,
		},
		Now: d.opts.Now,
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("accounting database %s: %w", a.Path, err)
	}
	return l, nil
}

// reloadAccounting puts the new quotas in force at once and writes the
// counts so far. The [accounting] table itself needs a restart.
func (d *daemon) reloadAccounting(old, cfg *config.Config) {
	if cfg.Accounting != old.Accounting {
		d.log.Warn("[accounting] changed; it takes effect at the next restart",
			zap.String("running_path", old.Accounting.Path), zap.String("configured_path", cfg.Accounting.Path))
	}
	if d.ledger == nil {
		return
	}
	d.ledger.SetQuotas(Quotas(cfg))
	d.ledger.Flush()
}

// quotaOver cuts the running flows of a key over its quota.
func (d *daemon) quotaOver(key string) {
	if d.srv == nil {
		return
	}
	if n := d.srv.CloseAccount(key); n > 0 {
		d.log.Info("closed flows over quota", zap.String("user", key), zap.Int("flows", n))
	}
}

// runAccounting flushes the ledger until ctx ends; without one, when the
// database failed at start, it says so every minute instead.
func (d *daemon) runAccounting(ctx context.Context) {
	if d.ledger != nil {
		d.wg.Go(func() { d.ledger.Run(ctx) })
		return
	}
	if d.accountingErr == nil {
		return
	}
	d.wg.Go(func() {
		t := time.NewTicker(accountingOffWarn)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				d.log.Warn("serving WITHOUT accounting or quotas: the database could not be opened at start; fix it and restart",
					zap.Error(d.accountingErr))
			}
		}
	})
}

// closeAccounting writes the last counts and closes the database; called
// once no flow runs any more.
func (d *daemon) closeAccounting() {
	if d.ledger == nil {
		return
	}
	if err := d.ledger.Close(); err != nil {
		d.log.Error("could not write the last accounting counts", zap.Error(err))
	}
}

// listenerKey is what a listener's unauthenticated flows are counted
// under: its name, else its address.
func listenerKey(l config.Listener) string {
	if l.Name != "" {
		return l.Name
	}
	return l.Address
}

// Quotas lists the quota of every user and listener of cfg, by accounting
// key; keys without a quota get their reporting period only.
func Quotas(cfg *config.Config) map[string]accounting.Quota {
	out := make(map[string]accounting.Quota, len(cfg.Users)+len(cfg.Listeners))
	for _, u := range cfg.Users {
		if u.Quota.Bytes > 0 {
			out[u.Name] = quota(u.Quota)
		}
	}
	for _, l := range cfg.Listeners {
		if l.NoAuth && l.Quota.Bytes > 0 {
			out[listenerKey(l)] = quota(l.Quota)
		}
	}
	return out
}

var periods = map[string]accounting.Period{
	"":                 accounting.Month,
	config.PeriodDay:   accounting.Day,
	config.PeriodWeek:  accounting.Week,
	config.PeriodMonth: accounting.Month,
}

func quota(q config.Quota) accounting.Quota {
	return accounting.Quota{Bytes: q.Bytes, Period: periods[q.Period], ResetDay: q.ResetDay}
}

// usageHandler serves /usage: the live totals as JSON, including what has
// not been flushed yet. ?period=day|week|month picks one period for all.
func (d *daemon) usageHandler(w http.ResponseWriter, r *http.Request) {
	if d.ledger == nil {
		http.Error(w, "accounting is off", http.StatusNotFound)
		return
	}
	var p *accounting.Period
	if s := r.URL.Query().Get("period"); s != "" {
		v, ok := accounting.ParsePeriod(s)
		if !ok {
			http.Error(w, "period must be day, week or month", http.StatusBadRequest)
			return
		}
		p = &v
	}
	w.Header().Set("Content-Type", "application/json")
	accounting.WriteJSON(w, d.ledger.Usage(p))
}

// Usage is `ifsocks usage`: it reads the database of cfg (the daemon may
// be running; its counts of the last flush interval are not there yet) and
// writes a table, or JSON, per user. period is "", "day", "week" or
// "month"; "" means each user's quota period.
func Usage(w io.Writer, cfg *config.Config, period string, asJSON bool, now time.Time) error {
	if cfg.Accounting.Path == "" {
		return fmt.Errorf("accounting is off in %s: no [accounting] path", cfg.Source)
	}
	var p *accounting.Period
	if period != "" {
		v, ok := accounting.ParsePeriod(period)
		if !ok {
			return fmt.Errorf("-period %q: must be day, week or month", period)
		}
		p = &v
	}
	db, err := usagedb.OpenReadOnly(cfg.Accounting.Path)
	if err != nil {
		return err
	}
	defer db.Close()
	us, err := accounting.Report(db, Quotas(cfg), p, now)
	if err != nil {
		return err
	}
	if asJSON {
		return accounting.WriteJSON(w, us)
	}
	return accounting.WriteTable(w, us)
}
