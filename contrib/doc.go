// Package contrib holds files for running ifsocks alongside other tools:
// a Grafana dashboard (grafana/ifsocks.json) and Prometheus alerting rules
// (prometheus/alerts.yml). It has no code; its tests check that every
// metric those files name is one ifsocks serves, and the dashboard's
// structure. CI also runs promtool on the rules.
package contrib
