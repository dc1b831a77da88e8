package relay

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// sinceLastReceive is how long ago c last received payload, from the
// kernel's tcpi_last_data_recv (milliseconds). If it cannot be read (the
// socket is already closed) it reports zero: the flow is ending anyway and
// must not be counted as idle.
func sinceLastReceive(c *net.TCPConn) time.Duration {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var ms uint32
	var ierr error
	err = rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if ierr == nil {
			ms = info.Last_data_recv
		}
	})
	if err != nil || ierr != nil {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}
