package usagedb_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ifsocks/ifsocks/accounting"
	"github.com/ifsocks/ifsocks/usagedb"
)

func openTB(t testing.TB, path string) *usagedb.DB {
	t.Helper()
	d, err := usagedb.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestAddLoadReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.db")
	d := openTB(t, path)
	batch := []accounting.Row{
		{Key: "alice", Day: "2026-12-01", Up: 10, Down: 20, Flows: 1},
		{Key: "bob", Day: "2026-12-02", Up: 1, Down: 2, Flows: 3},
	}
	for range 2 {
		if err := d.Add(batch); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	if err := d.Add([]accounting.Row{{Key: "alice", Day: "2026-11-30", Up: 5}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = openTB(t, path)
	got, err := d.Load("2026-12-01")
	if err != nil {
		t.Fatal(err)
	}
	want := []accounting.Row{
		{Key: "alice", Day: "2026-12-01", Up: 20, Down: 40, Flows: 2},
		{Key: "bob", Day: "2026-12-02", Up: 2, Down: 4, Flows: 6},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load = %+v, want %+v", got, want)
	}
	ro, err := usagedb.OpenReadOnly(path)
	if err != nil {
		t.Fatalf("OpenReadOnly while open for writing: %v", err)
	}
	defer ro.Close()
	all, err := ro.Load("")
	if err != nil || len(all) != 3 {
		t.Errorf("read-only Load = %+v, %v, want 3 rows", all, err)
	}
	if err := ro.Add(batch); err == nil {
		t.Error("Add through a read-only handle succeeded")
	}
}

func TestOpenBadFiles(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database at all\n", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	// A real database whose pages were overwritten in the middle.
	damaged := filepath.Join(dir, "damaged.db")
	d := openTB(t, damaged)
	var rows []accounting.Row
	for i := range 2000 {
		rows = append(rows, accounting.Row{Key: strings.Repeat("u", 50) + string(rune('a'+i%26)), Day: "2026-12-" + string(rune('0'+i/1000)) + "1", Up: int64(i)})
	}
	if err := d.Add(rows); err != nil {
		t.Fatal(err)
	}
	d.Close()
	data, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	for i := 4096 + 100; i < len(data) && i < 4096*3; i++ {
		data[i] = 0xA5
	}
	os.Remove(damaged + "-wal")
	os.Remove(damaged + "-shm")
	if err := os.WriteFile(damaged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "newer.db")
	d = openTB(t, newer)
	d.Close()
	sqlExec(t, newer, "INSERT INTO schema_version (version) VALUES (99)")

	tests := []struct {
		name string
		path string
		want string
	}{
		{"garbage", garbage, "not a database"},
		{"damaged", damaged, "integrity check failed"},
		{"no directory", filepath.Join(dir, "nope", "usage.db"), "no such file"},
		{"newer schema", newer, "newer ifsocks"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := usagedb.Open(tc.path)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			msg := err.Error()
			for _, w := range []string{tc.path, tc.want, "on_error"} {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if tc.name == "newer schema" && !errors.Is(err, usagedb.ErrNewerSchema) {
				t.Errorf("error does not wrap ErrNewerSchema")
			}
		})
	}
}

// sqlExec runs a statement through a second handle, as an operator's
// tool would.
func sqlExec(t *testing.T, path, stmt string) {
	t.Helper()
	if err := usagedb.Exec(path, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}
