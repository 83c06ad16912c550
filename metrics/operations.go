package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// Operations counts the VM operations the domain manager finishes, by kind
// and outcome, with their durations. Observe is domain.Config.OnOperation.
type Operations struct {
	duration *prometheus.HistogramVec
}

// operationBuckets span a pause (milliseconds) to a clean shutdown that
// waits for its guest (minutes).
var operationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// NewOperations returns an empty Operations.
func NewOperations() *Operations {
	return &Operations{duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "xenopsd_operation_duration_seconds",
		Help:    "VM operations (start, shutdown, ...; guest-event is the daemon's reaction to a guest) by outcome, and how long they ran",
		Buckets: operationBuckets,
	}, []string{"operation", "outcome"})}
}

// Observe records one finished operation: err is its result.
func (o *Operations) Observe(operation string, err error, took time.Duration) {
	o.duration.WithLabelValues(operation, outcome(err)).Observe(took.Seconds())
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "succeeded"
	case errors.Is(err, context.Canceled) || domain.CodeOf(err) == domain.CodeCancelled:
		return "cancelled"
	}
	return "failed"
}

// Describe implements prometheus.Collector.
func (o *Operations) Describe(ch chan<- *prometheus.Desc) { o.duration.Describe(ch) }

// Collect implements prometheus.Collector.
func (o *Operations) Collect(ch chan<- prometheus.Metric) { o.duration.Collect(ch) }

// NewRegistry returns a registry of cs plus the Go runtime's and the
// process's metrics.
func NewRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return reg, nil
}
