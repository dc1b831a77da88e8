package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/usagedb"
)

// TestUsageCommand: `ifsocks usage` reads the database named by the
// configuration, as a table or JSON, and refuses what it cannot do with a
// message saying why.
func TestUsageCommand(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "usage.db")
	db, err := usagedb.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	today := accounting.Quota{Period: accounting.Day}.Start(time.Now()).Format("2006-01-02")
	if err := db.Add([]accounting.Row{{Key: "alice", Day: today, Up: 1500, Down: 2 << 20, Flows: 3}}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("c.toml", "[accounting]\npath = \""+dbPath+"\"\n[[users]]\nname = \"alice\"\npassword = \"pw\"\nquota = \"4MiB\"\nquota_period = \"day\"\n")
	off := write("off.toml", "[log]\nlevel = \"info\"\n")

	out, _, err := runCmd(t, "", "usage", "-config", cfg)
	if err != nil {
		t.Fatalf("usage: %v", err)
	}
	for _, want := range []string{"USER", "alice", "day", today, "1.46 KiB", "2.00 MiB", "4.00 MiB", "50.0%"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCmd(t, "", "usage", "-config", cfg, "-period", "month", "-json")
	if err != nil {
		t.Fatalf("usage -json: %v", err)
	}
	var rows []accounting.Usage
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("usage -json = %q, %v", out, err)
	}
	if r := rows[0]; r.User != "alice" || r.Up != 1500 || r.Down != 2<<20 || r.Flows != 3 || r.Period != "month" || r.Quota != 0 {
		t.Errorf("usage -json -period month = %+v (the quota is per day: not shown for a month)", r)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"accounting off", []string{"-config", off}, "accounting is off"},
		{"bad period", []string{"-config", cfg, "-period", "year"}, "-period \"year\""},
		{"no database", []string{"-config", write("gone.toml", "[accounting]\npath = \""+filepath.Join(dir, "gone.db")+"\"\n")}, "gone.db"},
		{"stray argument", []string{"-config", cfg, "now"}, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCmd(t, "", append([]string{"usage"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("usage %q: %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "gone.db")); err == nil {
		t.Error("usage created the database it was asked to read")
	}
}
