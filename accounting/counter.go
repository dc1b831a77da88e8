// Package accounting counts each user's traffic while its flows run, keeps
// the totals per UTC day, enforces quotas over calendar periods, and hands
// the totals to a Store (package usagedb, an SQLite file) in one batch per
// flush interval.
//
// The flow path only touches a Counter: atomic adds of the bytes each
// relay step moved, and a quota check when a flow starts. Everything else
// — the per-day totals, the database, warnings, cutting flows over quota —
// happens in the ledger's own goroutine, once per flush interval. It does
// not know SOCKS or HTTP: callers pick the key (a user name, a listener's
// name or address, or NoAuthKey).
package accounting

import (
	"errors"
	"sync/atomic"
)

// NoAuthKey is the key of flows without authentication on a listener that
// has no entry of its own.
const NoAuthKey = "-"

// ErrQuotaExceeded is returned by Counter.Check when the key has used its
// quota for the current period; SOCKS answers 0x02, HTTP 403.
var ErrQuotaExceeded = errors.New("quota exceeded")

// Counter is one key's live traffic. The relay adds to Up and Down as it
// moves bytes; the ledger takes the counts away at each flush. A nil
// *Counter counts nothing and never refuses.
type Counter struct {
	// Up and Down are the payload bytes moved since the last flush,
	// client to target and back.
	Up, Down atomic.Int64
	flows    atomic.Int64 // flows started since the last flush

	key string
	// used is the bytes of the current quota period as of the last
	// flush; quota is the cap, 0 for none. Both set by the ledger.
	used  atomic.Int64
	quota atomic.Int64
}

// Key is what the counter counts for.
func (c *Counter) Key() string { return c.key }

// Check tells whether a new flow may start: it fails with
// ErrQuotaExceeded once the key's traffic in the current period has
// reached its quota.
func (c *Counter) Check() error {
	if c.Over() {
		return ErrQuotaExceeded
	}
	return nil
}

// Started counts a flow that passed every check and starts.
func (c *Counter) Started() {
	if c != nil {
		c.flows.Add(1)
	}
}

// Over reports whether the key has used its quota: the bytes flushed in
// this period plus those counted since.
func (c *Counter) Over() bool {
	if c == nil {
		return false
	}
	q := c.quota.Load()
	return q > 0 && c.used.Load()+c.Up.Load()+c.Down.Load() >= q
}

// AddUp and AddDown count payload bytes of datagrams, which do not go
// through the relay.
func (c *Counter) AddUp(n int64) {
	if c != nil {
		c.Up.Add(n)
	}
}

// AddDown: see AddUp.
func (c *Counter) AddDown(n int64) {
	if c != nil {
		c.Down.Add(n)
	}
}
