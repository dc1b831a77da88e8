package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

func tcpCmd(args []string) error {
	fs := flag.NewFlagSet("tcp", flag.ContinueOnError)
	var e endpoint
	e.register(fs, portBulk)
	streams := fs.Int("streams", 1, "parallel TCP streams")
	dir := fs.String("dir", "down", "up (client sends) or down (client receives)")
	dur := fs.Duration("duration", 10*time.Second, "how long to transfer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.parse(); err != nil {
		return err
	}
	if *dir != "up" && *dir != "down" || *streams < 1 {
		return fmt.Errorf("-dir %q -streams %d: want up|down and at least 1", *dir, *streams)
	}
	conns, err := openStreams(&e, *streams, *dir)
	if err != nil {
		return err
	}
	meter := startCPU(e.watch)
	start := time.Now()
	total, elapsed, err := transfer(conns, *dir, start.Add(*dur), e.timeout)
	cpu := meter.stop()
	if err != nil {
		return err
	}
	return e.emit(Record{
		Test: e.testName(fmt.Sprintf("tcp-%d-%s", *streams, *dir)),
		Values: map[string]float64{
			"mbps":    float64(total) * 8 / elapsed.Seconds() / 1e6,
			"bytes":   float64(total),
			"seconds": elapsed.Seconds(),
		},
		CPU: cpu,
	})
}

// openStreams connects every stream and tells the server its direction
// before the clock starts, so handshakes are not part of the figure.
func openStreams(e *endpoint, n int, dir string) ([]*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	mode := []byte{'D'}
	if dir == "up" {
		mode[0] = 'U'
	}
	conns := make([]*net.TCPConn, 0, n)
	for range n {
		c, err := e.open(ctx)
		if err == nil {
			_, err = c.Write(mode)
		}
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("open stream %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// transfer moves data on every stream until deadline and returns the
// bytes that arrived and the time they took. Uploads count what the server
// says it received, and last until it has said so; downloads count what
// was read before the deadline.
func transfer(conns []*net.TCPConn, dir string, deadline time.Time, grace time.Duration) (int64, time.Duration, error) {
	start := time.Now()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		last  time.Time
		first error
	)
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			var n int64
			var err error
			if dir == "up" {
				n, err = upload(c, deadline, grace)
			} else {
				n, err = download(c, deadline)
			}
			mu.Lock()
			defer mu.Unlock()
			total += n
			if now := time.Now(); now.After(last) {
				last = now
			}
			if err != nil && first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	return total, last.Sub(start), first
}

// upload sends blocks until deadline, then a last block marked by its
// first byte (see serveBulk), and returns the byte count the server
// answers.
func upload(c *net.TCPConn, deadline time.Time, grace time.Duration) (int64, error) {
	buf := make([]byte, bulkBuf)
	c.SetWriteDeadline(deadline.Add(grace)) // a stalled proxy ends the test
	for time.Now().Before(deadline) {
		if _, err := c.Write(buf); err != nil {
			return 0, fmt.Errorf("upload: %w", err)
		}
	}
	buf[0] = 1
	c.SetDeadline(time.Now().Add(grace))
	if _, err := c.Write(buf); err != nil {
		return 0, fmt.Errorf("upload: last block: %w", err)
	}
	var cnt [8]byte
	if _, err := io.ReadFull(c, cnt[:]); err != nil {
		return 0, fmt.Errorf("upload: read byte count: %w", err)
	}
	return int64(binary.BigEndian.Uint64(cnt[:])), nil
}

func download(c *net.TCPConn, deadline time.Time) (int64, error) {
	buf := make([]byte, bulkBuf)
	c.SetReadDeadline(deadline)
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return n, nil
			}
			return n, fmt.Errorf("download: %w", err)
		}
	}
}

// probeCmd makes one connection to the echo server and checks the echo:
// run.sh uses it to tell that a proxy works before measuring it.
func probeCmd(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	var e endpoint
	e.register(fs, portEcho)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := e.parse(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	c, err := e.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(e.timeout))
	msg := []byte("ifsbench probe")
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("probe write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("probe echo: %w", err)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("probe echo: got %q", got)
	}
	return nil
}
