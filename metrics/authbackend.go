package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// authBackendMetrics count the requests to an auth backend (HTTP hook,
// LDAP): logins answered from the cache are not requests.
type authBackendMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func (m *Metrics) newAuthBackend(register func(prometheus.Collector)) {
	a := &m.authBackend
	a.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_auth_backend_requests_total",
		Help: "Requests to the auth backend by backend (http, ldap) and result: allow, deny, invalid (accepted with settings that are not valid: refused), error (down, timeout, garbage), busy (no slot within the timeout: max_concurrent requests in flight).",
	}, []string{"backend", "result"})
	a.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ifsocks_auth_backend_duration_seconds",
		Help:    "Time of auth backend requests, by backend.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
	}, []string{"backend"})
	register(a.requests)
	register(a.duration)
}

// AuthBackend observes one request to the auth backend.
func (m *Metrics) AuthBackend(backend, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.authBackend.requests.WithLabelValues(backend, result).Inc()
	if d > 0 {
		m.authBackend.duration.WithLabelValues(backend).Observe(d.Seconds())
	}
}
