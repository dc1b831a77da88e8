package relay

import (
	"sync"
	"time"
)

// IdleTimer ends a flow that has been quiet for a given time. It is a
// single runtime timer, not a goroutine: when it fires it asks how long
// the flow has had no traffic and either ends it or re-arms for the time
// remaining. Busy flows therefore cost nothing per byte.
type IdleTimer struct {
	d   time.Duration
	src idler

	mu   sync.Mutex
	t    *time.Timer
	done bool
}

// idler is what an IdleTimer watches: how long the flow has been quiet,
// and how to end it.
type idler interface {
	quiet() time.Duration
	expire()
}

// funcIdler is an idler made of two functions (StartIdleTimer).
type funcIdler struct {
	quietFn  func() time.Duration
	expireFn func()
}

func (f *funcIdler) quiet() time.Duration { return f.quietFn() }
func (f *funcIdler) expire()              { f.expireFn() }

// StartIdleTimer arms a timer that calls expire (once, from the timer's
// goroutine) when quiet() reports at least d.
func StartIdleTimer(d time.Duration, quiet func() time.Duration, expire func()) *IdleTimer {
	it := new(IdleTimer)
	it.start(d, &funcIdler{quietFn: quiet, expireFn: expire})
	return it
}

// start arms it for src. A relayed flow is its own idler and holds its
// IdleTimer by value: that makes the timer of an idle tunnel one heap
// object (the runtime's) instead of four.
func (it *IdleTimer) start(d time.Duration, src idler) {
	it.d, it.src = d, src
	it.mu.Lock()
	defer it.mu.Unlock()
	it.t = time.AfterFunc(d, it.check)
}

func (it *IdleTimer) check() {
	q := it.src.quiet()
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
	it.src.expire()
}

// Stop disarms the timer. After Stop returns, expire is not called unless
// it was already running. Stopping a timer never started does nothing.
func (it *IdleTimer) Stop() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.done = true
	if it.t != nil {
		it.t.Stop()
	}
}
