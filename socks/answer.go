package socks

import "net/netip"

// answerer tells a client the outcome of its request in the client's
// protocol. The flow itself — egress plan, policy, limits, relay, record —
// is the same for every protocol; only these replies differ.
type answerer interface {
	// refusal answers a request the server refused. rep is the RFC 1928
	// reply code for err, which every protocol maps to its own.
	refusal(rep byte, err error)
	// success answers a request whose upstream is connected, bnd being
	// its local address. It returns bytes the client sent after its
	// request that the protocol's reader had buffered, for the upstream.
	success(bnd netip.AddrPort) (early []byte, err error)
}

func (sc *serverConn) answerRefusal(rep byte, err error) {
	if sc.ans != nil {
		sc.ans.refusal(rep, err)
		return
	}
	writeReply(sc.conn, rep, netip.AddrPort{})
}

func (sc *serverConn) answerSuccess(bnd netip.AddrPort) ([]byte, error) {
	if sc.ans != nil {
		return sc.ans.success(bnd)
	}
	return nil, writeReply(sc.conn, RepSucceeded, bnd)
}
