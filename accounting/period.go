package accounting

import "time"

// Period is the length of a quota period: calendar periods in UTC.
type Period int

const (
	Month Period = iota // from ResetDay of one month to ResetDay of the next
	Week                // Monday to Monday
	Day
)

var periodNames = [...]string{Month: "month", Week: "week", Day: "day"}

func (p Period) String() string { return periodNames[p] }

// ParsePeriod reads "day", "week" or "month".
func ParsePeriod(s string) (Period, bool) {
	for i, n := range periodNames {
		if n == s {
			return Period(i), true
		}
	}
	return 0, false
}

// Quota caps a key's bytes (both directions together) per period.
type Quota struct {
	Bytes  int64 // 0: no cap; usage is still reported per Period
	Period Period
	// ResetDay is the day of the month a monthly period starts (1-28;
	// 0 is taken as 1).
	ResetDay int
}

// dayLayout is how a day is written in the database: sortable as text and
// readable in the sqlite3 shell.
const dayLayout = "2006-01-02"

// Start is the first day of the period that holds t.
func (q Quota) Start(t time.Time) time.Time {
	t = t.UTC()
	y, m, d := t.Date()
	day := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	switch q.Period {
	case Day:
		return day
	case Week:
		return day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	}
	reset := max(q.ResetDay, 1)
	if d < reset {
		m--
	}
	return time.Date(y, m, reset, 0, 0, 0, 0, time.UTC)
}

// End is the first day after the period that holds t.
func (q Quota) End(t time.Time) time.Time {
	s := q.Start(t)
	switch q.Period {
	case Day:
		return s.AddDate(0, 0, 1)
	case Week:
		return s.AddDate(0, 0, 7)
	}
	return s.AddDate(0, 1, 0)
}
