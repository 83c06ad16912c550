package metrics

import (
	"bufio"
	"compress/gzip"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Handler serves a scrape: reg's metrics (the daemon's, gRPC's, the Go
// runtime's and the process's, through the Prometheus client), then the
// host's and the VMs' from one snapshot of host (nil: none), written here. It answers in
// OpenMetrics when the scraper asks for it and in the Prometheus text
// format otherwise, gzipped when the scraper accepts it. A collector's error
// is logged and the rest is served.
//
// Why host's metrics are not a prometheus.Collector registered with reg:
// the client's Gather checks every series for consistency and sorts each
// family, and its encoder escapes every label, which cost about 45 µs of
// CPU per VM per scrape (0.45 s at 10,000 VMs, BenchmarkScrape); the host
// and VM series are ours, valid by construction (see exposition), so they
// are written straight to the response, from one snapshot.
func Handler(reg prometheus.Gatherer, host *Collector, log *slog.Logger) http.Handler {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		format := expfmt.NegotiateAccept(r.Header, expfmt.FmtOpenMetrics_1_0_0, expfmt.FmtOpenMetrics_0_0_1, expfmt.FmtText)
		mfs, err := reg.Gather()
		if err != nil {
			log.Warn("metrics: part of the scrape failed; serving the rest", "err", err)
		}
		w.Header().Set("Content-Type", string(format))
		var out io.Writer = w
		if acceptsGzip(r) {
			w.Header().Set("Content-Encoding", "gzip")
			gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
			defer gz.Close()
			out = gz
		}
		bw := bufio.NewWriterSize(out, 64<<10)
		defer bw.Flush()
		enc := expfmt.NewEncoder(bw, format)
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				log.Warn("metrics: writing the scrape", "err", err)
				return
			}
		}
		if host != nil {
			if err := host.write(bw, format.FormatType() == expfmt.TypeOpenMetrics); err != nil {
				log.Warn("metrics: part of the host's or the VMs' metrics could not be read; serving the rest", "err", err)
			}
		}
		if c, ok := enc.(expfmt.Closer); ok {
			_ = c.Close() // OpenMetrics' "# EOF"
		}
	})
	return http.TimeoutHandler(h, 30*time.Second, "metrics: the scrape took more than 30s")
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.TrimSpace(enc) == "gzip" && strings.TrimSpace(q) != "q=0" {
			return true
		}
	}
	return false
}

// family is one hand-written metric family (see Handler).
type family struct {
	name, help string
	counter    bool
}

// exposition writes families in the Prometheus text format or in
// OpenMetrics. Label values must need no escaping: the writer's callers
// pass UUIDs, names the domain manager validated (letters, digits, '.',
// '_', '-'), numbers and words of ours. A family's HELP and TYPE are
// written before its first sample, so a family with no sample is left out.
type exposition struct {
	w       *bufio.Writer
	om      bool
	fam     family // the family being written
	started bool   // its header is written
	num     []byte
}

// begin starts family f.
func (e *exposition) begin(f family) { e.fam, e.started = f, false }

// header writes family f's HELP and TYPE lines. In OpenMetrics a counter
// family is named without its samples' _total suffix.
func (e *exposition) header(f family) {
	name, typ := f.name, "gauge"
	if f.counter {
		typ = "counter"
		if e.om {
			name = strings.TrimSuffix(name, "_total")
		}
	}
	e.w.WriteString("# HELP ")
	e.w.WriteString(name)
	e.w.WriteByte(' ')
	e.w.WriteString(escapeHelp(f.help, e.om))
	e.w.WriteString("\n# TYPE ")
	e.w.WriteString(name)
	e.w.WriteByte(' ')
	e.w.WriteString(typ)
	e.w.WriteByte('\n')
}

// sample writes one sample of the current family: its labels are extra
// (`k="v",`, possibly empty) followed by labels (`k="v",k="v"`, possibly
// empty).
func (e *exposition) sample(extra, labels string, v float64) {
	f := e.fam
	if !e.started {
		e.started = true
		e.header(f)
	}
	e.w.WriteString(f.name)
	if extra != "" || labels != "" {
		e.w.WriteByte('{')
		e.w.WriteString(extra)
		e.w.WriteString(labels)
		e.w.WriteByte('}')
	}
	e.w.WriteByte(' ')
	e.num = appendFloat(e.num[:0], v, e.om)
	e.w.Write(e.num)
	e.w.WriteByte('\n')
}

// appendFloat formats v as the Prometheus client's encoders do: OpenMetrics
// always shows a float (1.0), the text format the shortest form (1).
func appendFloat(b []byte, v float64, om bool) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	start := len(b)
	b = strconv.AppendFloat(b, v, 'g', -1, 64)
	if om && !strings.ContainsAny(string(b[start:]), "e.") {
		b = append(b, '.', '0')
	}
	return b
}

// escapeHelp escapes a HELP text: backslash and newline, and in
// OpenMetrics the double quote too.
func escapeHelp(s string, om bool) string {
	if om {
		return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
	}
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}
