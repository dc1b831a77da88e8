package metrics

import "github.com/prometheus/client_golang/prometheus"

// accountingMetrics are the metrics of traffic accounting and quotas.
type accountingMetrics struct {
	quotaExceeded *prometheus.GaugeVec
	writeErrors   prometheus.Counter
}

func (m *Metrics) newAccounting(register func(prometheus.Collector)) {
	a := &m.accounting
	a.quotaExceeded = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ifsocks_quota_exceeded",
		Help: "1 while a user (or a no-auth listener) with a quota has used it up for the current period, else 0.",
	}, []string{"user"})
	a.writeErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ifsocks_accounting_write_errors_total",
		Help: "Flushes the accounting database refused (a full disk, say); their counts stay in memory and are retried at the next flush.",
	})
	register(a.quotaExceeded)
	register(a.writeErrors)
}

// QuotaExceeded sets whether user is over its quota.
func (m *Metrics) QuotaExceeded(user string, over bool) {
	if m == nil {
		return
	}
	v := 0.0
	if over {
		v = 1
	}
	m.accounting.quotaExceeded.WithLabelValues(user).Set(v)
}

// AccountingWriteFailed counts a flush the database refused.
func (m *Metrics) AccountingWriteFailed() {
	if m == nil {
		return
	}
	m.accounting.writeErrors.Inc()
}
