package usagedb

import "database/sql"

// Exec runs one statement on the file at path (tests only).
func Exec(path, stmt string) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(stmt)
	return err
}
