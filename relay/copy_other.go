//go:build !linux

package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// copyConn is a plain copy outside Linux (ifsocks as a whole needs Linux).
// Its bytes are counted when it ends.
func copyConn(h *half) (int64, error) {
	n, err := io.Copy(h.dst, h.src)
	add(h.live, n)
	return n, err
}

// copyLimited is a buffered copy paced by lim outside Linux.
func copyLimited(ctx context.Context, dst, src *net.TCPConn, lim *rate.Limiter, moved, live *atomic.Int64) (int64, error) {
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := src.Read(buf[:chunk(lim, len(buf))])
		if n > 0 {
			for left := n; left > 0; {
				k := chunk(lim, left)
				retry, perr := pace(ctx, lim, k)
				if perr != nil {
					return total, perr
				}
				if !retry {
					left -= k
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			add(live, int64(n))
			moved.Store(time.Now().UnixNano())
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
