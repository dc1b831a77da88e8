package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

func tunnelsCmd(args []string) error {
	fs := flag.NewFlagSet("tunnels", flag.ContinueOnError)
	var e endpoint
	e.register(fs, portEcho)
	n := fs.Int("n", 10000, "tunnels to open")
	conc := fs.Int("concurrency", 50, "tunnels being opened at once")
	pid := fs.Int("rss-pid", 0, "proxy process whose memory (with its descendants) is measured")
	settle := fs.Duration("settle", 2*time.Second, "wait after opening before measuring")
	openLimit := fs.Duration("open-timeout", 3*time.Minute, "give up opening after this long")
	hold := fs.Duration("hold", 0, "keep the tunnels this long after measuring; 0: until SIGINT/SIGTERM (at most 1h)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.parse(); err != nil {
		return err
	}
	if need, got := uint64(*n)+1024, raiseNoFile(uint64(*n)+1024); got < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d, %d tunnels need %d", got, *n, need)
	}
	m0 := treeMemory(*pid)
	// Socket and pipe structures are kernel slab memory, in no RSS. The
	// figure is host-wide (client and servers' sockets too): an upper
	// bound for the proxy, and noisy on a shared machine.
	slab0 := procField("/proc/meminfo", "Slab:")
	meter := startCPU(e.watch)
	t0 := time.Now()
	conns, st := openTunnels(&e, *n, *conc, *openLimit)
	openTime := time.Since(t0)
	cpu := meter.stop()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) == 0 {
		return fmt.Errorf("no tunnel opened: %s", st.summary())
	}
	time.Sleep(*settle)
	m1 := treeMemory(*pid)
	slab1 := procField("/proc/meminfo", "Slab:")
	k := float64(len(conns))
	err := e.emit(Record{Test: e.testName("tunnels"), CPU: cpu, Text: st.summary(), Values: map[string]float64{
		"open":            k,
		"failed":          float64(st.nerr.Load()),
		"open_seconds":    openTime.Seconds(),
		"rss_before_kib":  float64(m0.rss),
		"rss_after_kib":   float64(m1.rss),
		"kib_per_tunnel":  float64(m1.rss-m0.rss) / k,
		"pss_per_tunnel":  float64(m1.pss-m0.pss) / k,
		"fds_per_tunnel":  float64(m1.fds-m0.fds) / k,
		"slab_per_tunnel": float64(slab1-slab0) / k,
	}})
	if err != nil {
		return err
	}
	limit := *hold
	if limit == 0 {
		limit = time.Hour
	}
	ctx, cancel := untilSignal(limit)
	defer cancel()
	<-ctx.Done()
	return nil
}

// openTunnels opens up to n tunnels to the echo server, conc at a time,
// and proves each end to end with a one-byte echo. It stops early at the
// limit; failures are counted, not fatal.
func openTunnels(e *endpoint, n, conc int, limit time.Duration) ([]*net.TCPConn, *rateStats) {
	st := &rateStats{errs: make(map[string]int)}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	var (
		mu    sync.Mutex
		conns = make([]*net.TCPConn, 0, n)
		wg    sync.WaitGroup
	)
	for range conc {
		wg.Go(func() {
			for range jobs {
				if ctx.Err() != nil {
					st.fail(ctx.Err())
					continue
				}
				c, err := openTunnel(ctx, e)
				if err != nil {
					st.fail(err)
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return conns, st
}

func openTunnel(ctx context.Context, e *endpoint) (*net.TCPConn, error) {
	c, err := e.open(ctx)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(e.timeout))
	b := []byte{'x'}
	_, err = c.Write(b)
	if err == nil {
		_, err = io.ReadFull(c, b)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
