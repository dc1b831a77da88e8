//go:build !linux

package relay

import (
	"net"
	"time"
)

// sinceLastReceive has no portable source outside Linux; the idle timeout
// is not enforced there (ifsocks as a whole needs Linux).
func sinceLastReceive(c *net.TCPConn) time.Duration { return 0 }
