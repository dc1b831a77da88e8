package relay

import (
	"sync"
	"time"
)

// IdleTimer ends a flow that has been quiet for a given time. It is a
// single runtime timer, not a goroutine: when it fires it asks quiet() how
// long the flow has had no traffic and either calls expire or re-arms for
// the time remaining. Busy flows therefore cost nothing per byte.
type IdleTimer struct {
	d      time.Duration
	quiet  func() time.Duration
	expire func()

	mu   sync.Mutex
	t    *time.Timer
	done bool
}

// StartIdleTimer arms a timer that calls expire (once, from the timer's
// goroutine) when quiet() reports at least d.
func StartIdleTimer(d time.Duration, quiet func() time.Duration, expire func()) *IdleTimer {
	it := &IdleTimer{d: d, quiet: quiet, expire: expire}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.t = time.AfterFunc(d, it.check)
	return it
}

func (it *IdleTimer) check() {
	q := it.quiet()
	it.mu.Lock()
	if it.done {
		it.mu.Unlock()
		return
	}
	if q < it.d {
		it.t.Reset(it.d - q)
		it.mu.Unlock()
		return
	}
	it.done = true
	it.mu.Unlock()
	it.expire()
}

// Stop disarms the timer. After Stop returns, expire is not called unless
// it was already running.
func (it *IdleTimer) Stop() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.done = true
	it.t.Stop()
}
