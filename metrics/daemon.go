package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Daemon counts the toolstack's own work as it happens, beyond the VM
// operations (Operations): the xenstore client's round trips and requests
// (its counters are XenstoreRoundTrips and XenstoreRequests, handed to
// xenstore.Client.CountRequests) and the state store's commits with their
// latency (ObserveCommit is store.Options.OnCommit).
type Daemon struct {
	roundTrips, requests prometheus.Counter
	commits              *prometheus.HistogramVec
}

// commitBuckets span a synced batch on fast flash (a fraction of a
// millisecond) to one stuck behind a slow disk (seconds).
var commitBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewDaemon returns a Daemon that has counted nothing.
func NewDaemon() *Daemon {
	return &Daemon{
		roundTrips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xenopsd_xenstore_round_trips_total",
			Help: "round trips to xenstored: a request and its reply, or a batch of requests sent in one write and their replies",
		}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xenopsd_xenstore_requests_total",
			Help: "requests sent to xenstored (a batch's count one each)",
		}),
		commits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xenopsd_store_commit_duration_seconds",
			Help:    "state store commits by outcome, and how long each took to be durable (queueing, the synced batch, applying it)",
			Buckets: commitBuckets,
		}, []string{"outcome"}),
	}
}

// XenstoreRoundTrips counts the xenstore client's round trips.
func (d *Daemon) XenstoreRoundTrips() prometheus.Counter { return d.roundTrips }

// XenstoreRequests counts the requests the round trips carried.
func (d *Daemon) XenstoreRequests() prometheus.Counter { return d.requests }

// ObserveCommit records one store commit: how long it took and its error.
func (d *Daemon) ObserveCommit(took time.Duration, err error) {
	o := "succeeded"
	if err != nil {
		o = "failed"
	}
	d.commits.WithLabelValues(o).Observe(took.Seconds())
}

// Describe implements prometheus.Collector.
func (d *Daemon) Describe(ch chan<- *prometheus.Desc) {
	d.roundTrips.Describe(ch)
	d.requests.Describe(ch)
	d.commits.Describe(ch)
}

// Collect implements prometheus.Collector.
func (d *Daemon) Collect(ch chan<- prometheus.Metric) {
	d.roundTrips.Collect(ch)
	d.requests.Collect(ch)
	d.commits.Collect(ch)
}

// Queues tells how much work waits in the domain manager; *domain.Manager
// is one.
type Queues interface {
	QueueDepth() (vms, ops int)
}

// QueueDepth is a prometheus.Collector of the domain manager's queue
// depths, read at each scrape (one QueueDepth call).
type QueueDepth struct {
	q        Queues
	vms, ops *prometheus.Desc
}

// NewQueueDepth returns the collector of q's queue depths.
func NewQueueDepth(q Queues) *QueueDepth {
	return &QueueDepth{
		q:   q,
		vms: prometheus.NewDesc("xenopsd_queued_vms", "VMs with operations queued: waiting for a worker or behind the operation running on the VM", nil, nil),
		ops: prometheus.NewDesc("xenopsd_queued_operations", "operations queued on every VM (running ones not counted)", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueDepth) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.vms
	ch <- c.ops
}

// Collect implements prometheus.Collector.
func (c *QueueDepth) Collect(ch chan<- prometheus.Metric) {
	vms, ops := c.q.QueueDepth()
	ch <- prometheus.MustNewConstMetric(c.vms, prometheus.GaugeValue, float64(vms))
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.GaugeValue, float64(ops))
}
