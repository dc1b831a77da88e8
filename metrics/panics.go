package metrics

import "github.com/prometheus/client_golang/prometheus"

// newPanics registers ifsocks_panics_total. Its one label, where, takes
// the few names of the goroutines of a connection (conn, relay,
// relay_done, udp_upstream, udp_downstream, bind_wait, http, http_dial),
// so it stays bounded.
func (m *Metrics) newPanics(register func(prometheus.Collector)) {
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_panics_total",
		Help: "Panics recovered in a connection's goroutines, by where they happened; each closed its own connection and the daemon kept serving. Any increase is a bug: the error log line has the stack.",
	}, []string{"where"})
	register(m.panics)
}

// Panic counts a panic recovered in a connection goroutine.
func (m *Metrics) Panic(where string) {
	if m == nil {
		return
	}
	m.panics.WithLabelValues(where).Inc()
}
