package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/syncer"
)

// registerCollectors adds to reg (which holds the syncer.Metrics already)
// the Status gauges of s, shardmap_build_info, and Go's and the process's
// collectors (go_*, process_*).
func registerCollectors(reg prometheus.Registerer, s interface{ Status() syncer.Status }, mapPath string) error {
	b := cli.ReadBuild()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "shardmap_build_info",
		Help:        "Always 1; the labels say which build of shardmap runs.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "go_version": b.GoVersion},
	})
	info.Set(1)
	for _, c := range []prometheus.Collector{
		newStatusCollector(s, mapPath), info,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// statusCollector exposes a syncer's Status as Prometheus metrics, read at
// scrape time (nothing is counted twice or kept apart from the syncer).
type statusCollector struct {
	s     interface{ Status() syncer.Status }
	descs map[string]*prometheus.Desc
}

func newStatusCollector(s interface{ Status() syncer.Status }, mapPath string) *statusCollector {
	labels := prometheus.Labels{"map": mapPath}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("shardmap_syncer_"+name, help, nil, labels)
	}
	return &statusCollector{s: s, descs: map[string]*prometheus.Desc{
		"ready":        d("ready", "1 when the live map is loaded and the last step succeeded."),
		"entries":      d("live_entries", "Entries in the live map, as the syncer knows it."),
		"changes":      d("changes_applied_total", "Change-log entries applied."),
		"full":         d("full_syncs_total", "Reconciles of the whole live map with Redis (at start, after HAProxy restarts, after doubt)."),
		"swaps":        d("swaps_total", "Whole-map versioned swaps."),
		"standby":      d("standby", "1 while another syncer holds this map's lease."),
		"refused":      d("refused_reconciles_total", "Reconciles refused because they would delete too much of the live map."),
		"drift":        d("drift_corrected_total", "Entries (or file rewrites) corrected by periodic reconciles."),
		"bad":          d("bad_entries_skipped_total", "Invalid entries found in Redis and skipped."),
		"pid":          d("haproxy_pid", "PID of the HAProxy process the live map was loaded into."),
		"file_written": d("file_written_timestamp_seconds", "When the map file was last written."),
	}}
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	ready := 0.0
	if st.Ready {
		ready = 1
	}
	g := func(k string, t prometheus.ValueType, v float64) {
		ch <- prometheus.MustNewConstMetric(c.descs[k], t, v)
	}
	g("ready", prometheus.GaugeValue, ready)
	g("entries", prometheus.GaugeValue, float64(st.Entries))
	g("changes", prometheus.CounterValue, float64(st.Changes))
	g("full", prometheus.CounterValue, float64(st.FullSyncs))
	g("swaps", prometheus.CounterValue, float64(st.Swaps))
	standby := 0.0
	if st.Standby {
		standby = 1
	}
	g("standby", prometheus.GaugeValue, standby)
	g("refused", prometheus.CounterValue, float64(st.Refused))
	g("drift", prometheus.CounterValue, float64(st.Drift))
	g("bad", prometheus.CounterValue, float64(st.BadSkipped))
	g("pid", prometheus.GaugeValue, float64(st.HAProxyPid))
	if !st.FileWritten.IsZero() {
		g("file_written", prometheus.GaugeValue, float64(st.FileWritten.UnixNano())/1e9)
	}
}
