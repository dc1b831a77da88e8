package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/config"
)

func TestAccountingValid(t *testing.T) {
	const acct = "[accounting]\npath = \"/var/lib/ifsocks/usage.db\"\n"
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, c *config.Config)
	}{
		{
			name: "off by default",
			text: "",
			check: func(t *testing.T, c *config.Config) {
				want := config.Accounting{FlushInterval: config.DefaultFlushInterval, OnError: config.OnErrorRefuse}
				if c.Accounting != want {
					t.Errorf("Accounting = %+v, want %+v", c.Accounting, want)
				}
			},
		},
		{
			name: "all keys",
			text: "[accounting]\npath = \"/tmp/u.db\"\nflush_interval = \"2s\"\non_error = \"serve\"\n",
			check: func(t *testing.T, c *config.Config) {
				want := config.Accounting{Path: "/tmp/u.db", FlushInterval: 2 * time.Second, OnError: config.OnErrorServe}
				if c.Accounting != want {
					t.Errorf("Accounting = %+v, want %+v", c.Accounting, want)
				}
			},
		},
		{
			name: "user quota with defaults",
			text: acct + userTOML("a", "pw") + "quota = \"100TiB\"\n",
			check: func(t *testing.T, c *config.Config) {
				want := config.Quota{Bytes: 100 << 40, Period: config.PeriodMonth, ResetDay: 1}
				if got := c.Users[0].Quota; got != want {
					t.Errorf("Quota = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "monthly quota from the 15th, and a daily one",
			text: acct + userTOML("a", "pw") + "quota = 1000\nquota_period = \"month\"\nquota_reset_day = 15\n" +
				userTOML("b", "pw") + "quota = \"5MB\"\nquota_period = \"day\"\n",
			check: func(t *testing.T, c *config.Config) {
				if got, want := c.Users[0].Quota, (config.Quota{Bytes: 1000, Period: "month", ResetDay: 15}); got != want {
					t.Errorf("users[0].Quota = %+v, want %+v", got, want)
				}
				if got, want := c.Users[1].Quota, (config.Quota{Bytes: 5e6, Period: "day", ResetDay: 1}); got != want {
					t.Errorf("users[1].Quota = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "no-auth listener quota",
			text: acct + "[[listeners]]\naddress = \"127.0.0.1:1081\"\nauth = \"none\"\nquota = \"1GiB\"\nquota_period = \"week\"\n",
			check: func(t *testing.T, c *config.Config) {
				if got, want := c.Listeners[0].Quota, (config.Quota{Bytes: 1 << 30, Period: "week", ResetDay: 1}); got != want {
					t.Errorf("Quota = %+v, want %+v", got, want)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tc.text), "test.toml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tc.check(t, c)
		})
	}
}

func TestAccountingInvalid(t *testing.T) {
	const acct = "[accounting]\npath = \"/var/lib/ifsocks/usage.db\"\n"
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"relative path", "[accounting]\npath = \"usage.db\"\n", []string{"accounting.path", `"usage.db"`, "absolute"}},
		{"empty path", "[accounting]\npath = \"\"\n", []string{"accounting.path", "absolute"}},
		{"bad flush interval", acct + "flush_interval = \"soon\"\n", []string{"accounting.flush_interval", `"soon"`, "not a duration"}},
		{"tiny flush interval", acct + "flush_interval = \"1ms\"\n", []string{"accounting.flush_interval", "at least 100ms"}},
		{"bad on_error", acct + "on_error = \"ignore\"\n", []string{"accounting.on_error", `"ignore"`, "refuse or serve"}},
		{"unknown key", acct + "file = \"x\"\n", []string{"unknown key", "accounting.file"}},
		{"quota without accounting", userTOML("a", "pw") + "quota = \"1GiB\"\n", []string{"users[0].quota", "needs [accounting] path"}},
		{"quota not a size", acct + userTOML("a", "pw") + "quota = \"lots\"\n", []string{"users[0].quota", `"lots"`}},
		{"quota too large", acct + userTOML("a", "pw") + "quota = \"2000TiB\"\n", []string{"users[0].quota", "at most 1024TiB"}},
		{"user named -", acct + userTOML("-", "pw"), []string{"users[0].name", `"-"`}},
		{
			"listener named like a user",
			acct + userTOML("a", "pw") + "[[listeners]]\naddress = \"127.0.0.1:1081\"\nname = \"a\"\nauth = \"none\"\n",
			[]string{"listeners[0].name", "users[0]"},
		},
		{"quota array", acct + userTOML("a", "pw") + "quota = [1]\n", []string{"users[0].quota"}},
		{"bad period", acct + userTOML("a", "pw") + "quota = 1\nquota_period = \"year\"\n", []string{"users[0].quota_period", `"year"`, "day, week or month"}},
		{"reset day 31", acct + userTOML("a", "pw") + "quota = 1\nquota_reset_day = 31\n", []string{"users[0].quota_reset_day", `"31"`, "1-28"}},
		{"reset day with week", acct + userTOML("a", "pw") + "quota = 1\nquota_period = \"week\"\nquota_reset_day = 3\n", []string{"users[0].quota_reset_day", "only with quota_period"}},
		{
			"quota on a password listener",
			acct + userTOML("a", "pw") + "[[listeners]]\naddress = \"127.0.0.1:1081\"\nquota = \"1GiB\"\n",
			[]string{"listeners[0].quota", "auth = \"none\""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.text), "test.toml")
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
