// Package metrics holds ifsocks' Prometheus metrics and serves them.
//
// Every method is safe on a nil *Metrics, which records nothing, so the
// server code calls them unconditionally and tests can pass nil. Labels are
// limited to what the configuration bounds — user, interface, outcome,
// reason, direction — never targets or client addresses, so the number of
// series cannot grow with traffic.
//
// It is part of the ifsocks program, not a public API: exported names
// serve the other packages of this module and change with them.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the set of ifsocks metrics in their own registry.
type Metrics struct {
	reg *prometheus.Registry

	flows        *prometheus.CounterVec
	active       *prometheus.GaugeVec
	bytes        *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	dial         *prometheus.HistogramVec
	skipped      *prometheus.CounterVec
	ifaceUp      *ifaceCollector
	udpDgrams    *prometheus.CounterVec
	udpDrops     *prometheus.CounterVec
	reloads      *prometheus.CounterVec
	lastReload   prometheus.Gauge
	limits       limitMetrics
	accounting   accountingMetrics
	authBackend  authBackendMetrics
	panics       *prometheus.CounterVec
}

// New creates the metrics, with the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.skipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_egress_skipped_total",
		Help: "Times an egress interface of a user with several was passed over for a flow, by interface and reason (down, missing, unreachable, error).",
	}, []string{"interface", "reason"})
	f(m.skipped)
	m.flows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_flows_total",
		Help: "Finished flows (CONNECT tunnels, UDP associations, forwarded HTTP requests) by protocol (socks5, socks4, http-connect, http), user, egress interface and outcome.",
	}, []string{"protocol", "user", "interface", "outcome"})
	m.active = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ifsocks_active_flows",
		Help: "Flows currently relaying, by user and egress interface.",
	}, []string{"user", "interface"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_bytes_total",
		Help: "Payload bytes relayed (TCP counted when a flow ends, UDP per datagram), by user, interface and direction (up: client to target).",
	}, []string{"user", "interface", "direction"})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_auth_failures_total",
		Help: "Failed authentications: bad_credentials (unknown user or wrong password, or refused by the auth backend), backend_unavailable (the auth backend gave no usable answer), no_method, or blocked (refused unchecked: the client IP is in its auth_fail_cooldown).",
	}, []string{"reason"})
	m.dial = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ifsocks_dial_duration_seconds",
		Help:    "Time to resolve and connect to a CONNECT target, by egress interface and result.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
	}, []string{"interface", "result"})
	m.ifaceUp = &ifaceCollector{desc: prometheus.NewDesc("ifsocks_interface_up",
		"1 if a configured egress interface exists and is up, else 0.", []string{"interface"}, nil)}
	m.udpDgrams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_udp_datagrams_total",
		Help: "UDP datagrams relayed, by user, interface and direction.",
	}, []string{"user", "interface", "direction"})
	m.udpDrops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_udp_dropped_total",
		Help: "UDP datagrams dropped, by reason.",
	}, []string{"reason"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ifsocks_config_reloads_total",
		Help: "Configuration reloads by result (success or failure).",
	}, []string{"result"})
	m.lastReload = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ifsocks_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful configuration load (start or reload).",
	})
	m.newLimits(f)
	m.newAccounting(f)
	m.newAuthBackend(f)
	m.newPanics(f)
	for _, c := range []prometheus.Collector{m.flows, m.active, m.bytes, m.authFailures, m.dial,
		m.ifaceUp, m.udpDgrams, m.udpDrops, m.reloads, m.lastReload,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	// Show the result series from the start, so a rate() over them works
	// before the first reload.
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// FlowDone counts a finished flow of protocol and its bytes. protocol is
// one of a fixed few names, so the label stays bounded.
func (m *Metrics) FlowDone(protocol, user, iface, outcome string, up, down int64) {
	if m == nil {
		return
	}
	m.flows.WithLabelValues(protocol, user, iface, outcome).Inc()
	if up > 0 {
		m.bytes.WithLabelValues(user, iface, "up").Add(float64(up))
	}
	if down > 0 {
		m.bytes.WithLabelValues(user, iface, "down").Add(float64(down))
	}
}

// FlowActive adds delta (+1 or -1) to the active flows of user on iface.
func (m *Metrics) FlowActive(user, iface string, delta float64) {
	if m == nil {
		return
	}
	m.active.WithLabelValues(user, iface).Add(delta)
}

// AuthFailure counts a failed authentication.
func (m *Metrics) AuthFailure(reason string) {
	if m == nil {
		return
	}
	m.authFailures.WithLabelValues(reason).Inc()
}

// Dial observes the time to resolve and connect.
func (m *Metrics) Dial(iface string, d time.Duration, ok bool) {
	if m == nil {
		return
	}
	result := "success"
	if !ok {
		result = "failure"
	}
	m.dial.WithLabelValues(iface, result).Observe(d.Seconds())
}

// EgressSkipped counts an interface passed over for a flow.
func (m *Metrics) EgressSkipped(iface, reason string) {
	if m == nil {
		return
	}
	m.skipped.WithLabelValues(iface, reason).Inc()
}

// InterfaceStates sets the source of ifsocks_interface_up: fn is called
// at each scrape and returns, for every configured interface, whether it is
// up. Reading the state when scraped, rather than copying it on every
// change, means the metric can never disagree with the watcher.
func (m *Metrics) InterfaceStates(fn func() map[string]bool) {
	if m == nil {
		return
	}
	m.ifaceUp.mu.Lock()
	defer m.ifaceUp.mu.Unlock()
	m.ifaceUp.fn = fn
}

type ifaceCollector struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	fn   func() map[string]bool
}

func (c *ifaceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *ifaceCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn == nil {
		return
	}
	for name, up := range fn() {
		v := 0.0
		if up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, name)
	}
}

// Reload counts a configuration reload; a success also sets the time of
// the last good load.
func (m *Metrics) Reload(ok bool) {
	if m == nil {
		return
	}
	if !ok {
		m.reloads.WithLabelValues("failure").Inc()
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.Loaded()
}

// Loaded records a successful configuration load at start.
func (m *Metrics) Loaded() {
	if m == nil {
		return
	}
	m.lastReload.SetToCurrentTime()
}

// UDPDrop counts a dropped datagram.
func (m *Metrics) UDPDrop(reason string) {
	if m == nil {
		return
	}
	m.udpDrops.WithLabelValues(reason).Inc()
}

// UDPCounters are one association's counters, looked up once so that each
// batch of datagrams costs only atomic adds.
type UDPCounters struct {
	dgramsUp, dgramsDown, bytesUp, bytesDown prometheus.Counter
}

// UDP returns the counters for an association of user on iface; nil when
// m is nil.
func (m *Metrics) UDP(user, iface string) *UDPCounters {
	if m == nil {
		return nil
	}
	return &UDPCounters{
		dgramsUp:   m.udpDgrams.WithLabelValues(user, iface, "up"),
		dgramsDown: m.udpDgrams.WithLabelValues(user, iface, "down"),
		bytesUp:    m.bytes.WithLabelValues(user, iface, "up"),
		bytesDown:  m.bytes.WithLabelValues(user, iface, "down"),
	}
}

// Up counts dgrams datagrams from the client, of n payload bytes in all.
func (c *UDPCounters) Up(dgrams, n int) {
	if c == nil {
		return
	}
	c.dgramsUp.Add(float64(dgrams))
	c.bytesUp.Add(float64(n))
}

// Down counts dgrams datagrams to the client, of n payload bytes in all.
func (c *UDPCounters) Down(dgrams, n int) {
	if c == nil {
		return
	}
	c.dgramsDown.Add(float64(dgrams))
	c.bytesDown.Add(float64(n))
}
