package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
)

// listener is one configured listening socket.
type listener struct {
	addr string // as written in the config
	ln   net.Listener
	// removed is set before a reload closes the listener, so its Serve
	// loop ending is not taken for a failure.
	removed atomic.Bool
}

// listen opens every address in addrs, or none: a daemon (or a reload)
// that cannot listen where it was told should not go on half-way.
func listen(ctx context.Context, addrs []string) (map[string]*listener, error) {
	lns := make(map[string]*listener, len(addrs))
	// Keepalive is set per relayed flow from the current settings
	// (socks), not on every accepted connection.
	lc := net.ListenConfig{KeepAlive: -1}
	for _, a := range addrs {
		ln, err := lc.Listen(ctx, listenNetwork(a), a)
		if err != nil {
			closeListeners(lns)
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		lns[a] = &listener{addr: a, ln: ln}
	}
	return lns, nil
}

func closeListeners(lns map[string]*listener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

// diffListeners splits want into addresses not yet open (added) and open
// listeners no longer wanted (removed). Unchanged listeners stay open
// throughout a reload, so clients never see a refused connection.
func diffListeners(have map[string]*listener, want []string) (added []string, removed []*listener) {
	wanted := make(map[string]bool, len(want))
	for _, a := range want {
		wanted[a] = true
		if have[a] == nil {
			added = append(added, a)
		}
	}
	for a, l := range have {
		if !wanted[a] {
			removed = append(removed, l)
		}
	}
	return added, removed
}

// listenNetwork picks tcp4 or tcp6 for an IP address so that "[::]:1080"
// and "0.0.0.0:1080" can both be configured: "tcp6" sets IPV6_V6ONLY,
// where plain "tcp" on [::] would take the IPv4 port too. An empty host
// (":1080") means both families on one socket.
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "tcp"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "tcp"
	}
	if ip.Is4() || ip.Is4In6() {
		return "tcp4"
	}
	return "tcp6"
}
