//go:build !linux

package relay

import (
	"io"
	"net"
)

// copyConn is a plain copy outside Linux (ifsocks as a whole needs Linux).
func copyConn(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }
