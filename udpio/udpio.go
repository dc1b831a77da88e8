// Package udpio moves UDP datagrams between a *net.UDPConn and buffers in
// batches: on Linux with recvmmsg(2) and sendmmsg(2), grouping datagrams of
// one size to one destination with UDP generic segmentation offload, and
// allocating nothing per datagram. Elsewhere it falls back to one datagram
// per system call behind the same interface.
//
// It is socket I/O only, like wireguard-go's conn package: it knows nothing
// of SOCKS, policy or limits (package socks decides what to send and counts
// it). A Reader and a Writer are each used by one goroutine at a time.
// It is part of ifsocks, not a public API.
package udpio

import (
	"net"
	"strconv"
)

// BatchSize is the most datagrams a Reader or Writer moves per system
// call (see reader_linux.go). At 16 the per-call cost is already spread thin,
// and a busy association's read buffers stay bounded: 16 of them per
// socket, each udp_max_datagram plus a header.
const BatchSize = 16

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
