package config

import "strings"

// Strategy picks among several egress interfaces. It is parsed here, once;
// package socks uses it as it is.
type Strategy int

const (
	// StrategyFailover uses the first usable interface, in the order
	// given (the default).
	StrategyFailover Strategy = iota
	// StrategyRoundRobin uses the usable interfaces in turn.
	StrategyRoundRobin
	// StrategyHash sends the same target by the same interface while it
	// is usable (rendezvous hashing: losing an interface moves only the
	// targets it had).
	StrategyHash
)

var strategyNames = []string{
	StrategyFailover:   "failover",
	StrategyRoundRobin: "round-robin",
	StrategyHash:       "hash",
}

func (s Strategy) String() string { return enumName(strategyNames, int(s)) }

// ReplyFilter says which datagrams from the network a UDP association
// passes back to its client (udp_reply_filter).
type ReplyFilter int

const (
	// ReplyAddressPort passes datagrams only from an address and port the
	// client has sent to (the default; like a port-restricted NAT).
	ReplyAddressPort ReplyFilter = iota
	// ReplyAddress passes datagrams from any port of an address the
	// client has sent to.
	ReplyAddress
	// ReplyNone passes every datagram (like a full-cone NAT).
	ReplyNone
)

var replyFilterNames = []string{
	ReplyAddressPort: "address-port",
	ReplyAddress:     "address",
	ReplyNone:        "none",
}

func (f ReplyFilter) String() string { return enumName(replyFilterNames, int(f)) }

func enumName(names []string, i int) string {
	if i < 0 || i >= len(names) {
		return "unknown"
	}
	return names[i]
}

// parseEnum returns the index of s in names.
func parseEnum(names []string, s string) (int, bool) {
	for i, n := range names {
		if n == s {
			return i, true
		}
	}
	return 0, false
}

// mustBe is the error text for a value not among names: "must be a, b or c".
func mustBe(names []string) string {
	if len(names) == 1 {
		return "must be " + names[0]
	}
	return "must be " + strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
