package socks

import (
	"net"
	"strconv"
)

// udpBatchSize is the most datagrams the UDP relay moves per system call
// (see udp_batch_linux.go). At 16 the per-call cost is already spread thin,
// and a busy association's read buffers stay bounded: 16 of them per
// socket, each udp_max_datagram plus a header.
const udpBatchSize = 16

// zoneName is the zone net.UDPConn gives an IPv6 address with this scope
// ID: the interface's name, or the number when there is no such interface.
func zoneName(id uint32) string {
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(id), 10)
}

// zoneIndex is the scope ID for a zone: a number, or an interface's name
// (0 when there is no such interface, as net.UDPConn does).
func zoneIndex(zone string) uint32 {
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n)
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}
