package accounting_test

import (
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
)

func TestPeriodStartEnd(t *testing.T) {
	day := func(s string) time.Time {
		d, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	tests := []struct {
		name       string
		q          accounting.Quota
		at         string
		start, end string
	}{
		{"day", accounting.Quota{Period: accounting.Day}, "2026-12-03 23:59", "2026-12-03", "2026-12-04"},
		{"week from Thursday", accounting.Quota{Period: accounting.Week}, "2026-12-03 10:00", "2026-11-30", "2026-12-07"},
		{"week on Monday", accounting.Quota{Period: accounting.Week}, "2026-11-30 00:00", "2026-11-30", "2026-12-07"},
		{"week on Sunday", accounting.Quota{Period: accounting.Week}, "2026-12-06 23:00", "2026-11-30", "2026-12-07"},
		{"month", accounting.Quota{Period: accounting.Month}, "2026-12-03 10:00", "2026-12-01", "2027-01-01"},
		{"month reset 0 is 1", accounting.Quota{Period: accounting.Month, ResetDay: 0}, "2026-12-01 00:00", "2026-12-01", "2027-01-01"},
		{"month from the 15th, before it", accounting.Quota{Period: accounting.Month, ResetDay: 15}, "2026-12-03 10:00", "2026-11-15", "2026-12-15"},
		{"month from the 15th, on it", accounting.Quota{Period: accounting.Month, ResetDay: 15}, "2026-12-15 00:00", "2026-12-15", "2027-01-15"},
		{"month across the year", accounting.Quota{Period: accounting.Month, ResetDay: 28}, "2027-01-02 00:00", "2026-12-28", "2027-01-28"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := day(tc.at)
			if got := tc.q.Start(at).Format("2006-01-02"); got != tc.start {
				t.Errorf("Start = %s, want %s", got, tc.start)
			}
			if got := tc.q.End(at).Format("2006-01-02"); got != tc.end {
				t.Errorf("End = %s, want %s", got, tc.end)
			}
		})
	}
	// Not UTC: the period is still the UTC one.
	east := time.FixedZone("UTC+10", 10*3600)
	at := time.Date(2026, 12, 1, 5, 0, 0, 0, east) // 2026-11-30 19:00 UTC
	if got := (accounting.Quota{Period: accounting.Month}).Start(at).Format("2006-01-02"); got != "2026-11-01" {
		t.Errorf("Start in UTC+10 = %s, want 2026-11-01", got)
	}
}

func TestParsePeriod(t *testing.T) {
	for _, p := range []accounting.Period{accounting.Day, accounting.Week, accounting.Month} {
		if got, ok := accounting.ParsePeriod(p.String()); !ok || got != p {
			t.Errorf("ParsePeriod(%q) = %v, %v", p.String(), got, ok)
		}
	}
	if _, ok := accounting.ParsePeriod("year"); ok {
		t.Error("ParsePeriod(year) succeeded")
	}
}
