package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// limitMetrics are the metrics of the abuse limits. Client addresses are
// never labels: an attacker controls how many there are.
type limitMetrics struct {
	connRefused *prometheus.CounterVec
	hsEvicted   *prometheus.CounterVec
	authBlocks  prometheus.Counter

	blockedMu sync.Mutex
	blockedFn func() int
	checksFn  func() int
	hsFn      func() int
}

func (m *Metrics) newLimits(register func(prometheus.Collector)) {
	l := &m.limits
	l.connRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_connections_refused_total",
		Help: "Client connections closed at accept, before any byte was read, by reason (handshakes_per_ip: the client IP (IPv6: /64) had max_handshakes_per_ip connections in their handshake, handshakes_per_prefix: its IPv6 /56 had 4 times that, max_handshakes: the server had max_handshakes, none of which could be evicted; not_allowed: outside the listener's allow_clients).",
	}, []string{"reason"})
	l.hsEvicted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_handshakes_evicted_total",
		Help: "Connections in their handshake closed to make room for a new one, by the cap that was reached (handshakes_per_ip, handshakes_per_prefix, max_handshakes).",
	}, []string{"reason"})
	l.authBlocks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ifsocks_auth_blocks_total",
		Help: "Blocks begun: a client IP (IPv6: /64) with one user name after auth_fail_limit failed authentications, or with any names after auth_fail_limit_ip; refused attempts count in ifsocks_auth_failures_total{reason=\"blocked\"}.",
	})
	blocked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ifsocks_auth_blocked_clients",
		Help: "Blocks in force: client IPs (IPv6: /64), and client IPs with one user name, refused authentication for auth_fail_cooldown.",
	}, func() float64 {
		l.blockedMu.Lock()
		fn := l.blockedFn
		l.blockedMu.Unlock()
		if fn == nil {
			return 0
		}
		return float64(fn())
	})
	checks := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ifsocks_auth_checks_running",
		Help: "Password checks (bcrypt) running now; at most 2 per core server-wide and 4 per client IP, more wait.",
	}, func() float64 {
		l.blockedMu.Lock()
		fn := l.checksFn
		l.blockedMu.Unlock()
		if fn == nil {
			return 0
		}
		return float64(fn())
	})
	handshakes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ifsocks_handshakes",
		Help: "Client connections in their handshake now (accepted, request not yet read), when a handshake cap is set.",
	}, func() float64 {
		l.blockedMu.Lock()
		fn := l.hsFn
		l.blockedMu.Unlock()
		if fn == nil {
			return 0
		}
		return float64(fn())
	})
	register(l.connRefused)
	register(l.hsEvicted)
	register(handshakes)
	register(l.authBlocks)
	register(blocked)
	register(checks)
	for _, r := range []string{"handshakes_per_ip", "handshakes_per_prefix", "max_handshakes"} {
		l.connRefused.WithLabelValues(r)
		l.hsEvicted.WithLabelValues(r)
	}
}

// ConnRefused counts a client connection closed at accept.
func (m *Metrics) ConnRefused(reason string) {
	if m == nil {
		return
	}
	m.limits.connRefused.WithLabelValues(reason).Inc()
}

// AuthBlocked counts a client IP blocked after too many failed
// authentications (once per block, not per refused attempt).
func (m *Metrics) AuthBlocked() {
	if m == nil {
		return
	}
	m.limits.authBlocks.Inc()
}

// AuthBlockedClients sets the source of ifsocks_auth_blocked_clients: fn
// is called at each scrape and returns how many client IPs are blocked, so
// that blocks ending by time need no bookkeeping to leave the gauge.
func (m *Metrics) AuthBlockedClients(fn func() int) {
	if m == nil {
		return
	}
	m.limits.blockedMu.Lock()
	defer m.limits.blockedMu.Unlock()
	m.limits.blockedFn = fn
}

// AuthChecksRunning sets the source of ifsocks_auth_checks_running: fn is
// called at each scrape.
func (m *Metrics) AuthChecksRunning(fn func() int) {
	if m == nil {
		return
	}
	m.limits.blockedMu.Lock()
	defer m.limits.blockedMu.Unlock()
	m.limits.checksFn = fn
}

// HandshakeEvicted counts a connection in its handshake closed to make
// room under the cap named by reason.
func (m *Metrics) HandshakeEvicted(reason string) {
	if m == nil {
		return
	}
	m.limits.hsEvicted.WithLabelValues(reason).Inc()
}

// Handshakes sets the source of ifsocks_handshakes: fn is called at each
// scrape.
func (m *Metrics) Handshakes(fn func() int) {
	if m == nil {
		return
	}
	m.limits.blockedMu.Lock()
	defer m.limits.blockedMu.Unlock()
	m.limits.hsFn = fn
}
