// Package usagedb is the SQLite file in which accounting keeps its
// per-day totals: one table, usage(user, day, bytes_up, bytes_down, flows),
// and a schema version. The file is in WAL mode, so the sqlite3 shell and
// `ifsocks usage` can read it while the daemon writes.
//
// It uses modernc.org/sqlite, a pure-Go SQLite: no cgo, so the daemon stays
// one static binary. It knows nothing of quotas or periods (package
// accounting does); it stores rows.
package usagedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ifsocks/ifsocks/accounting"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SchemaVersion is the layout this code reads and writes.
const SchemaVersion = 1

const schema = `
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
	user       TEXT    NOT NULL, -- user name, listener name or address, or '-'
	day        TEXT    NOT NULL, -- UTC day, YYYY-MM-DD
	bytes_up   INTEGER NOT NULL DEFAULT 0, -- client to target
	bytes_down INTEGER NOT NULL DEFAULT 0,
	flows      INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (user, day)
) WITHOUT ROWID;
`

const upsert = `INSERT INTO usage (user, day, bytes_up, bytes_down, flows) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user, day) DO UPDATE SET
	bytes_up = bytes_up + excluded.bytes_up,
	bytes_down = bytes_down + excluded.bytes_down,
	flows = flows + excluded.flows`

// ErrNewerSchema: the file was written by a newer ifsocks.
var ErrNewerSchema = errors.New("written by a newer ifsocks")

// DB is an open usage database; it implements accounting.Store.
type DB struct {
	db   *sql.DB
	path string
}

var _ accounting.Store = (*DB)(nil)

// Open opens or creates the database at path for the daemon, checks it
// (integrity and schema version) and puts it in WAL mode. Its errors name
// the file and say what to do.
func Open(path string) (*DB, error) {
	d, err := open(path, false)
	if err != nil {
		return nil, fmt.Errorf("accounting database %s: %w; check that the file and its directory exist and are writable by ifsocks; "+
			"if the file is damaged, move it aside (a new one is created) or restore a backup; "+
			"or set [accounting] on_error = \"serve\" to run without accounting", path, err)
	}
	return d, nil
}

// OpenReadOnly opens an existing database for reading only, while the
// daemon may be writing to it.
func OpenReadOnly(path string) (*DB, error) {
	d, err := open(path, true)
	if err != nil {
		return nil, fmt.Errorf("accounting database %s: %w", path, err)
	}
	return d, nil
}

func open(path string, readOnly bool) (*DB, error) {
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if readOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, err
		}
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	mode := "rwc"
	if readOnly {
		mode = "ro"
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// In WAL mode NORMAL survives a crash of the process (SIGKILL);
		// only a power loss can take back the last transactions.
		q.Add("_pragma", "synchronous(NORMAL)")
	}
	q.Set("mode", mode)
	u := url.URL{Scheme: "file", OmitHost: true, Path: path, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, err
	}
	// One connection: one writer, and the pragmas hold for every
	// statement.
	db.SetMaxOpenConns(1)
	d := &DB{db: db, path: path}
	if err := d.check(readOnly); err != nil {
		db.Close()
		return nil, err
	}
	return d, nil
}

// check verifies the file is a sound SQLite database of a schema this code
// knows, creating the schema in a new file.
func (d *DB) check(readOnly bool) error {
	ctx := context.Background()
	var res string
	if err := d.db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&res); err != nil {
		return err
	}
	if res != "ok" {
		return fmt.Errorf("integrity check failed: %s", strings.ReplaceAll(strings.TrimSpace(res), "\n", "; "))
	}
	if !readOnly {
		if _, err := d.db.ExecContext(ctx, schema); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	var v sql.NullInt64
	err := d.db.QueryRowContext(ctx, "SELECT max(version) FROM schema_version").Scan(&v)
	switch {
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	case v.Valid && v.Int64 > SchemaVersion:
		return fmt.Errorf("schema version %d: %w (this one knows %d)", v.Int64, ErrNewerSchema, SchemaVersion)
	case !v.Valid && !readOnly:
		if _, err := d.db.ExecContext(ctx, "INSERT INTO schema_version (version) VALUES (?)", SchemaVersion); err != nil {
			return fmt.Errorf("write schema version: %w", err)
		}
	}
	return nil
}

// Add adds rows to the totals in one transaction: all or none.
func (d *DB) Add(rows []accounting.Row) (err error) {
	ctx := context.Background()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	st, err := tx.PrepareContext(ctx, upsert)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, r := range rows {
		if _, err := st.ExecContext(ctx, r.Key, r.Day, r.Up, r.Down, r.Flows); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Load returns the rows of day since and later.
func (d *DB) Load(since string) ([]accounting.Row, error) {
	rs, err := d.db.QueryContext(context.Background(),
		"SELECT user, day, bytes_up, bytes_down, flows FROM usage WHERE day >= ? ORDER BY user, day", since)
	if err != nil {
		return nil, fmt.Errorf("read usage: %w", err)
	}
	defer rs.Close()
	var out []accounting.Row
	for rs.Next() {
		var r accounting.Row
		if err := rs.Scan(&r.Key, &r.Day, &r.Up, &r.Down, &r.Flows); err != nil {
			return nil, fmt.Errorf("read usage: %w", err)
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// Close closes the database. In WAL mode the last connection to close
// checkpoints the log into the main file.
func (d *DB) Close() error { return d.db.Close() }

// Path is the file's path.
func (d *DB) Path() string { return d.path }
