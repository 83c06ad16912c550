package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// domainMetric is one series of a VM (most of them of its domain). Its
// label pairs are built once per VM and shared by the VM's series:
// prometheus.NewConstMetric would build, validate and sort them again for
// each, which at 10,000 VMs is much of a scrape's cost. The values need
// no check: ids are UUIDs, names pass the domain manager's validation
// (ASCII letters, digits, '.', '_', '-'), the rest are ours.
type domainMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair // sorted by name
	kind   prometheus.ValueType
	value  float64
}

func (m domainMetric) Desc() *prometheus.Desc { return m.desc }

func (m domainMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	v := m.value
	if m.kind == prometheus.CounterValue {
		out.Counter = &dto.Counter{Value: &v}
	} else {
		out.Gauge = &dto.Gauge{Value: &v}
	}
	return nil
}

// domainLabels are the label pairs of a VM's domain series, sorted by
// name (domid, name, uuid), with extra pairs (already in order after name
// and before uuid, such as state) in between.
func domainLabels(uuid, name, domid string, extra ...*dto.LabelPair) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, 3+len(extra))
	out = append(out, labelPair("domid", domid), labelPair("name", name))
	out = append(out, extra...)
	return append(out, labelPair("uuid", uuid))
}

func labelPair(name, value string) *dto.LabelPair { return &dto.LabelPair{Name: &name, Value: &value} }
