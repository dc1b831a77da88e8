package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrUnavailable is returned by Remote.Authenticate when the backend could
// not give a usable answer (down, too slow, busy, an answer that is not
// valid) and no cached answer may stand in: the login is refused, never
// let through with some default.
var ErrUnavailable = errors.New("auth backend unavailable")

// Request is one login, as a backend is asked about it.
type Request struct {
	User     string `json:"user"`
	Password string `json:"password"`
	// Client is the client's address, Listener the address it connected
	// to, Protocol the proxy protocol ("socks5"): for the backend's
	// logs and rules. Answers are cached by user and password only.
	// Addresses, not strings, so a login answered from the cache
	// formats nothing.
	Client   netip.AddrPort `json:"client"`
	Listener netip.AddrPort `json:"listener"`
	Protocol string         `json:"protocol"`
}

// Answer is a backend's verdict on a login.
type Answer struct {
	Allow bool
	// Fields are the user's settings, by [[users]] key name (interface,
	// source_ip, rate_limit, ...), as the backend gave them.
	Fields map[string]any
}

// Backend asks the service that knows the users. Lookup returns an error
// only when the service failed; a refusal is an Answer with Allow false.
type Backend interface {
	Lookup(ctx context.Context, req Request) (Answer, error)
}

// Results of a backend request, for RemoteOptions.Observe.
const (
	ResultAllow   = "allow"   // accepted, with a valid answer
	ResultDeny    = "deny"    // refused by the backend
	ResultInvalid = "invalid" // accepted with settings that are not valid
	ResultError   = "error"   // the backend failed or timed out
	ResultBusy    = "busy"    // no request slot (max_concurrent) in time
)

// RemoteOptions tune a Remote.
type RemoteOptions struct {
	// CacheTTL is how long an accepted login is answered from the cache;
	// NegativeTTL the same for a refused one (0: not cached).
	CacheTTL, NegativeTTL time.Duration
	// StaleIfError lets an accepted answer serve that long past CacheTTL
	// when the backend fails.
	StaleIfError time.Duration
	// MaxConcurrent caps backend requests in flight; Wait is how long a
	// login waits for a slot.
	MaxConcurrent int
	Wait          time.Duration
	// CacheSize bounds the cached answers (DefaultCacheSize when 0).
	CacheSize int
	// Observe, when set, is told the result and duration of every
	// backend request.
	Observe func(result string, d time.Duration)
}

// Remote authenticates against a Backend and turns its answers into T (the
// caller's user type) with build, which validates them. Answers are cached
// under a keyed hash of user and password (never the password itself),
// identical logins in flight share one request, and at most MaxConcurrent
// requests run at once. It is safe for concurrent use.
type Remote[T any] struct {
	backend Backend
	build   func(user string, a Answer) (T, error)
	opt     RemoteOptions
	keys    keyer
	sem     chan struct{}
	flight  singleflight.Group

	mu      sync.Mutex
	entries map[[32]byte]*remoteEntry[T]
}

type remoteEntry[T any] struct {
	val     T
	allow   bool
	expires time.Time // answer from the cache until then
	stale   time.Time // an accepted answer may stand in for a failure until then
}

// NewRemote returns a Remote asking b and building users with build.
func NewRemote[T any](b Backend, opt RemoteOptions, build func(user string, a Answer) (T, error)) *Remote[T] {
	if opt.CacheSize <= 0 {
		opt.CacheSize = DefaultCacheSize
	}
	if opt.MaxConcurrent <= 0 {
		opt.MaxConcurrent = 1
	}
	return &Remote[T]{
		backend: b, build: build, opt: opt, keys: newKeyer(),
		sem:     make(chan struct{}, opt.MaxConcurrent),
		entries: make(map[[32]byte]*remoteEntry[T]),
	}
}

// Authenticate checks req's user and password and returns the user's
// settings. It returns an error wrapping ErrBadCredentials when the backend
// refuses, or ErrUnavailable when it cannot answer.
func (r *Remote[T]) Authenticate(ctx context.Context, req Request) (T, error) {
	key := r.keys.key(req.User, req.Password)
	if e := r.cached(key, time.Now()); e != nil {
		if e.allow {
			return e.val, nil
		}
		return e.val, ErrBadCredentials
	}
	// Concurrent logins with the same credentials (a client opening many
	// connections at once) share one request. It runs without the
	// first caller's cancellation: that client giving up must not fail
	// the others; the backend's own timeout bounds it. Each caller waits
	// only as long as its own ctx allows.
	ch := r.flight.DoChan(string(key[:]), func() (any, error) {
		return r.ask(context.WithoutCancel(ctx), key, req)
	})
	var zero T
	select {
	case res := <-ch:
		if res.Err != nil {
			return zero, res.Err
		}
		return res.Val.(T), nil
	case <-ctx.Done():
		return zero, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
}

// Cached returns the settings of an accepted login still fresh in the
// cache, without asking the backend: the cheap path of a client that
// logs in again, which needs neither a request slot nor the login
// limits' bookkeeping.
func (r *Remote[T]) Cached(user, password string) (T, bool) {
	if e := r.cached(r.keys.key(user, password), time.Now()); e != nil && e.allow {
		return e.val, true
	}
	var zero T
	return zero, false
}

// cached returns the fresh cache entry for key, or nil.
func (r *Remote[T]) cached(key [32]byte, now time.Time) *remoteEntry[T] {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[key]
	if e == nil || !now.Before(e.expires) {
		return nil
	}
	return e
}

// ask puts req to the backend and caches the verdict.
func (r *Remote[T]) ask(ctx context.Context, key [32]byte, req Request) (T, error) {
	var zero T
	if err := r.acquire(ctx); err != nil {
		r.observe(ResultBusy, 0)
		return r.stale(key, err)
	}
	start := time.Now()
	a, err := r.backend.Lookup(ctx, req)
	<-r.sem
	took := time.Since(start)
	if err != nil {
		r.observe(ResultError, took)
		return r.stale(key, err)
	}
	if !a.Allow {
		r.observe(ResultDeny, took)
		r.store(key, zero, false, r.opt.NegativeTTL)
		return zero, ErrBadCredentials
	}
	v, err := r.build(req.User, a)
	if err != nil {
		// The backend's fault, not the client's: not cached, so a
		// fixed backend is used at once; the error names the key.
		r.observe(ResultInvalid, took)
		return zero, fmt.Errorf("%w: invalid answer for the user: %w", ErrUnavailable, err)
	}
	r.observe(ResultAllow, took)
	r.store(key, v, true, r.opt.CacheTTL)
	return v, nil
}

// acquire takes a request slot, waiting at most opt.Wait.
func (r *Remote[T]) acquire(ctx context.Context) error {
	select {
	case r.sem <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(r.opt.Wait)
	defer t.Stop()
	select {
	case r.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%d requests already in flight (max_concurrent)", r.opt.MaxConcurrent)
	}
}

// stale answers a failed request from an accepted answer past its TTL but
// within StaleIfError, or refuses with ErrUnavailable.
func (r *Remote[T]) stale(key [32]byte, cause error) (T, error) {
	r.mu.Lock()
	e := r.entries[key]
	r.mu.Unlock()
	if e != nil && e.allow && time.Now().Before(e.stale) {
		return e.val, nil
	}
	var zero T
	return zero, fmt.Errorf("%w: %w", ErrUnavailable, cause)
}

func (r *Remote[T]) store(key [32]byte, v T, allow bool, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	now := time.Now()
	e := &remoteEntry[T]{val: v, allow: allow, expires: now.Add(ttl)}
	if allow {
		e.stale = e.expires.Add(r.opt.StaleIfError)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.entries) >= r.opt.CacheSize {
		r.evict(now)
	}
	r.entries[key] = e
}

// evict drops entries that can serve no more, then arbitrary ones until
// there is room: losing one costs one backend request later.
func (r *Remote[T]) evict(now time.Time) {
	for k, e := range r.entries {
		if !now.Before(e.expires) && !now.Before(e.stale) {
			delete(r.entries, k)
		}
	}
	for k := range r.entries {
		if len(r.entries) < r.opt.CacheSize {
			break
		}
		delete(r.entries, k)
	}
}

func (r *Remote[T]) observe(result string, d time.Duration) {
	if r.opt.Observe != nil {
		r.opt.Observe(result, d)
	}
}
