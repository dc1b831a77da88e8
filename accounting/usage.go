package accounting

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"
)

// Usage is one key's traffic in one period, as `ifsocks usage` and the
// /usage endpoint show it.
type Usage struct {
	User        string  `json:"user"`
	Period      string  `json:"period"`
	PeriodStart string  `json:"period_start"`
	Up          int64   `json:"bytes_up"`
	Down        int64   `json:"bytes_down"`
	Flows       int64   `json:"flows"`
	Quota       int64   `json:"quota"`        // 0: none
	PercentUsed float64 `json:"percent_used"` // of Quota; 0 without one
}

// usageOf builds key's usage in the period that applies: the asked one, or
// the key's quota period. The quota is shown only when the period is the
// quota's own, where the percentage means something.
func usageOf(key string, q Quota, hasQuota bool, period *Period, now time.Time, sum func(from, to string) Row) Usage {
	p := q
	if !hasQuota {
		p = Quota{Period: Month}
	}
	if period != nil && *period != p.Period {
		p = Quota{Period: *period, ResetDay: q.ResetDay}
		if *period != Month || !hasQuota {
			p.ResetDay = 1
		}
	}
	r := sum(p.Start(now).Format(dayLayout), p.End(now).Format(dayLayout))
	u := Usage{User: key, Period: p.Period.String(), PeriodStart: p.Start(now).Format(dayLayout),
		Up: r.Up, Down: r.Down, Flows: r.Flows}
	if hasQuota && p == q {
		u.Quota = q.Bytes
	}
	u.percent()
	return u
}

func (u *Usage) percent() {
	u.PercentUsed = 0
	if u.Quota > 0 {
		u.PercentUsed = float64(u.Up+u.Down) * 100 / float64(u.Quota)
	}
}

// Report reads usage from a store, as Ledger.Usage does from memory: for
// every key with traffic in the last periods or a quota.
func Report(s Store, quotas map[string]Quota, period *Period, now time.Time) ([]Usage, error) {
	rows, err := s.Load(now.UTC().AddDate(0, 0, -keep).Format(dayLayout))
	if err != nil {
		return nil, err
	}
	days := map[string]map[string]*Row{}
	for _, r := range rows {
		addRow(days, r)
	}
	keys := map[string]bool{}
	for k := range days {
		keys[k] = true
	}
	for k := range quotas {
		keys[k] = true
	}
	var out []Usage
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		q, hasQuota := quotas[key]
		u := usageOf(key, q, hasQuota, period, now, func(from, to string) Row {
			var r Row
			for day, d := range days[key] {
				if day >= from && day < to {
					r.add(*d)
				}
			}
			return r
		})
		if u.Up+u.Down+u.Flows > 0 || u.Quota > 0 {
			out = append(out, u)
		}
	}
	return out, nil
}

// WriteJSON writes usage as one JSON array.
func WriteJSON(w io.Writer, us []Usage) error {
	if us == nil {
		us = []Usage{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(us)
}

// WriteTable writes usage as an aligned table for people.
func WriteTable(w io.Writer, us []Usage) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "USER\tPERIOD\tSINCE\tUP\tDOWN\tFLOWS\tQUOTA\tUSED\t")
	for _, u := range us {
		quota, used := "-", "-"
		if u.Quota > 0 {
			quota, used = size(u.Quota), fmt.Sprintf("%.1f%%", u.PercentUsed)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n",
			u.User, u.Period, u.PeriodStart, size(u.Up), size(u.Down), u.Flows, quota, used)
	}
	return tw.Flush()
}

// size writes n bytes in binary units, exact bytes below 1 KiB.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
