package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// Defaults of [accounting] and of the quota keys.
const (
	// DefaultFlushInterval bounds what a SIGKILL or a power cut loses,
	// and how long a flow may run past its user's quota.
	DefaultFlushInterval = 10 * time.Second
	// MinFlushInterval keeps the writer from turning into a busy loop.
	MinFlushInterval  = 100 * time.Millisecond
	DefaultOnError    = OnErrorRefuse
	DefaultQuotaPer   = PeriodMonth
	DefaultResetDay   = 1
	MaxQuotaResetDay  = 28 // every month has it
	OnErrorRefuse     = "refuse"
	OnErrorServe      = "serve"
	PeriodDay         = "day"
	PeriodWeek        = "week"
	PeriodMonth       = "month"
	accountingNeedKey = "accounting.path"
)

// Accounting is the [accounting] table: per-user traffic totals kept in an
// SQLite file. Path "" turns accounting (and quotas) off.
type Accounting struct {
	Path          string
	FlushInterval time.Duration
	// OnError is OnErrorRefuse (a database that cannot be opened at
	// start stops the daemon) or OnErrorServe (serve without accounting).
	OnError string
}

// Quota caps the bytes (both directions together) a user, or a listener's
// unauthenticated flows, may move per calendar period in UTC. Bytes 0
// means no quota. The zero value (no quota key given) has no Period:
// such usage is reported by calendar month.
type Quota struct {
	Bytes int64
	// Period is PeriodDay, PeriodWeek (from Monday) or PeriodMonth.
	Period string
	// ResetDay is the day of the month a monthly period starts on.
	ResetDay int
}

// fileQuota holds the quota keys shared by [[users]] and [[listeners]].
type fileQuota struct {
	Quota         any    `toml:"quota"`
	QuotaPeriod   string `toml:"quota_period"`
	QuotaResetDay int    `toml:"quota_reset_day"`
}

func (v *validator) accounting(c *Config, f *file) {
	a := &c.Accounting
	a.Path = f.Accounting.Path
	if f.defined("accounting", "path") && (a.Path == "" || !filepath.IsAbs(a.Path)) {
		v.add(accountingNeedKey, a.Path, "must be an absolute file path (unset to turn accounting off)")
	}
	if f.defined("accounting", "flush_interval") {
		d, err := time.ParseDuration(f.Accounting.FlushInterval)
		switch {
		case err != nil:
			v.add("accounting.flush_interval", f.Accounting.FlushInterval, "not a duration (use e.g. \"10s\")")
		case d < MinFlushInterval:
			v.add("accounting.flush_interval", f.Accounting.FlushInterval, fmt.Sprintf("must be at least %v", MinFlushInterval))
		default:
			a.FlushInterval = d
		}
	}
	if f.defined("accounting", "on_error") {
		switch a.OnError = f.Accounting.OnError; a.OnError {
		case OnErrorRefuse, OnErrorServe:
		default:
			v.add("accounting.on_error", a.OnError, "must be refuse or serve")
		}
	}
}

// quota checks the quota keys of an entry. hasPath says whether
// accounting is on: a quota without it could never be counted.
func (v *validator) quota(key func(string) string, fq fileQuota, hasPath bool) Quota {
	if fq.Quota == nil && fq.QuotaPeriod == "" && fq.QuotaResetDay == 0 {
		return Quota{} // no quota; usage is shown by month
	}
	q := Quota{Period: DefaultQuotaPer, ResetDay: DefaultResetDay}
	if fq.Quota != nil {
		n, err := parseSize(fq.Quota, maxQuota)
		switch {
		case err != nil:
			v.add(key("quota"), fmt.Sprint(fq.Quota), "bytes per period: "+err.Error())
		case !hasPath && n > 0:
			v.add(key("quota"), fmt.Sprint(fq.Quota), "needs [accounting] path, where usage is counted")
		default:
			q.Bytes = n
		}
	}
	if fq.QuotaPeriod != "" {
		switch q.Period = fq.QuotaPeriod; q.Period {
		case PeriodDay, PeriodWeek, PeriodMonth:
		default:
			v.add(key("quota_period"), fq.QuotaPeriod, "must be day, week or month")
		}
	}
	if fq.QuotaResetDay != 0 {
		switch d := fq.QuotaResetDay; {
		case d < 1 || d > MaxQuotaResetDay:
			v.add(key("quota_reset_day"), strconv.Itoa(d), fmt.Sprintf("must be 1-%d (a day every month has)", MaxQuotaResetDay))
		case q.Period != PeriodMonth:
			v.add(key("quota_reset_day"), strconv.Itoa(d), "only with quota_period = \"month\"")
		default:
			q.ResetDay = d
		}
	}
	return q
}

// accountingKeys refuses, with accounting on, a no-auth listener whose
// name (the key its flows are counted under) is a user's name, or a user
// named like the key of unauthenticated flows: their totals would mix.
func (v *validator) accountingKeys(c *Config) {
	if c.Accounting.Path == "" {
		return
	}
	users := map[string]int{}
	for i, u := range c.Users {
		users[u.Name] = i
		if u.Name == noAuthKey {
			v.add(fmt.Sprintf("users[%d].name", i), u.Name, "with [accounting], \"-\" is the name under which flows without authentication are counted")
		}
	}
	for i, l := range c.Listeners {
		if j, ok := users[l.Name]; ok && l.NoAuth && l.Name != "" {
			v.add(fmt.Sprintf("listeners[%d].name", i), l.Name, fmt.Sprintf("with [accounting], a no-auth listener is counted under its name, which is users[%d]'s", j))
		}
	}
}

// noAuthKey is accounting.NoAuthKey (config does not import accounting).
const noAuthKey = "-"
