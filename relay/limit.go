package relay

import (
	"context"
	"errors"
	"net"
	"time"

	"golang.org/x/time/rate"
)

// Limits paces the two directions of a relay. One limiter may be shared by
// any number of flows (all of a user's traffic, say): each direction takes
// tokens for one chunk at a time, never more than the limiter's burst, so
// flows sharing it interleave instead of one starving the others. A nil
// limiter leaves its direction unpaced.
type Limits struct {
	Up   *rate.Limiter // client to upstream
	Down *rate.Limiter // upstream to client
}

// StartLimited is Start with the directions paced by lim.
//
// A paced direction can be parked in its limiter rather than on a socket,
// where closing the connections would not reach it; so the relay watches
// ctx as well: when ctx is done it closes both connections and cuts any
// wait short, and the flow ends as if by an error on a side (Result.Err is
// ctx's error unless another error came first).
//
// The data path is Start's: each direction still waits for its socket to
// become readable and moves what is queued, by splice(2) when it is bulk,
// only in chunks of at most the burst and after the limiter allows them.
// Callers with nothing to pace should call Start, which does not watch a
// context at all.
func StartLimited(ctx context.Context, client, upstream *net.TCPConn, idle time.Duration, lim Limits, cnt Counts, done func(Result)) *Flow {
	f := &Flow{conns: [2]*net.TCPConn{client, upstream}, done: done, pending: 2, parent: ctx}
	f.halves[0] = half{f: f, dst: upstream, src: client, count: &f.up, lim: lim.Up, live: cnt.Up}
	f.halves[1] = half{f: f, dst: client, src: upstream, count: &f.down, lim: lim.Down, live: cnt.Down}
	f.rawConns()
	f.ctx, f.cancel = context.WithCancel(ctx)
	// Registered before the copiers start: a ctx already done closes
	// the connections at once and both directions end.
	f.stopWatch = context.AfterFunc(f.ctx, f.closeBoth)
	if idle > 0 {
		f.timer.start(idle, f)
	}
	go f.run(&f.halves[0])
	go f.run(&f.halves[1])
	return f
}

// chunk is how many of avail queued bytes a paced direction may take at
// once: at most the limiter's burst (WaitN refuses more) and at most one
// second of the rate, at least one byte. The second keeps a slow flow
// moving often: its source then receives data at least that often, which
// is what the idle timer (TCP_INFO's last receive) sees. Limit and burst
// are read each time because a reload may change them.
func chunk(lim *rate.Limiter, avail int) int {
	r := lim.Limit()
	if r == rate.Inf {
		return avail
	}
	perSecond := int(min(float64(r), float64(avail)))
	return max(1, min(avail, lim.Burst(), perSecond))
}

// errNoBurst: a finite limiter with a zero burst, which can never allow
// a byte; the socks package never builds one.
var errNoBurst = errors.New("relay: rate limiter has a zero burst")

// pace waits until lim allows n bytes. It fails when ctx ends; a burst
// lowered by a reload since chunk was computed only asks the caller to
// compute the chunk again (retry true).
func pace(ctx context.Context, lim *rate.Limiter, n int) (retry bool, err error) {
	err = lim.WaitN(ctx, n)
	switch {
	case err == nil:
		return false, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case lim.Burst() < 1:
		return false, errNoBurst
	}
	return true, nil
}
