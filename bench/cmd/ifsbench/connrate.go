package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// msgSize is the message each connection of the rate test echoes.
const msgSize = 64

func connrateCmd(args []string) error {
	fs := flag.NewFlagSet("connrate", flag.ContinueOnError)
	var e endpoint
	e.register(fs, portEcho)
	conc := fs.Int("concurrency", 50, "connections in flight")
	dur := fs.Duration("duration", 10*time.Second, "how long to open connections")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.parse(); err != nil {
		return err
	}
	secs := int(math.Ceil(dur.Seconds()))
	st := &rateStats{perSec: make([]atomic.Int64, secs), errs: make(map[string]int)}
	meter := startCPU(e.watch)
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	lats := make([][]time.Duration, *conc)
	for w := range *conc {
		wg.Go(func() { lats[w] = rateWorker(&e, start, deadline, st) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := meter.stop()
	all := slices.Concat(lats...)
	slices.Sort(all)
	series := make([]float64, secs)
	for i := range st.perSec {
		series[i] = float64(st.perSec[i].Load())
	}
	ok := float64(len(all))
	vals := map[string]float64{
		"rate":     ok / elapsed.Seconds(),
		"ok":       ok,
		"errors":   float64(st.nerr.Load()),
		"p50_ms":   ms(percentile(all, 0.50)),
		"p99_ms":   ms(percentile(all, 0.99)),
		"first_s":  series[0],
		"last_s":   series[secs-1],
		"duration": elapsed.Seconds(),
	}
	if st.nerr.Load() > 0 {
		fmt.Fprintf(os.Stderr, "connrate %s: %d errors: %s\n", e.subject, st.nerr.Load(), st.summary())
	}
	return e.emit(Record{Test: e.testName("connrate"), Values: vals, CPU: cpu, Series: series, Text: st.summary()})
}

// rateStats is shared by the workers.
type rateStats struct {
	perSec []atomic.Int64 // completed cycles by the second they ended in
	nerr   atomic.Int64
	mu     sync.Mutex
	errs   map[string]int // by kind, for the report
}

func (s *rateStats) fail(err error) {
	s.nerr.Add(1)
	kind := errKind(err)
	s.mu.Lock()
	s.errs[kind]++
	s.mu.Unlock()
}

func (s *rateStats) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for k, n := range s.errs {
		parts = append(parts, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// errKind names an error coarsely enough that a run's errors fit in one
// line: the SOCKS reply code, or the errno.
func errKind(err error) string {
	var re ReplyError
	var en syscall.Errno
	switch {
	case errors.As(err, &re):
		return re.Error()
	case errors.Is(err, errAuth):
		return "auth refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed by peer"
	case errors.As(err, &en):
		return en.Error()
	}
	return "other"
}

// rateWorker runs full cycles back to back until deadline and returns the
// latency of each successful one.
func rateWorker(e *endpoint, start, deadline time.Time, st *rateStats) []time.Duration {
	var lats []time.Duration
	msg := make([]byte, msgSize)
	got := make([]byte, msgSize)
	for {
		t0 := time.Now()
		if !t0.Before(deadline) {
			return lats
		}
		if err := cycle(e, msg, got, t0); err != nil {
			st.fail(err)
			// A proxy refusing at once must not turn this loop into a
			// busy spin that steals the cores it needs.
			time.Sleep(time.Millisecond)
			continue
		}
		end := time.Now()
		lats = append(lats, end.Sub(t0))
		if i := int(end.Sub(start) / time.Second); i < len(st.perSec) {
			st.perSec[i].Add(1)
		}
	}
}

// cycle is one connection: connect, greeting, authentication, CONNECT,
// 64 bytes out, the same 64 back, close.
func cycle(e *endpoint, msg, got []byte, t0 time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), t0.Add(e.timeout))
	defer cancel()
	c, err := e.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(t0.Add(e.timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, got)
	return err
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
