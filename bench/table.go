package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"
)

// rowKey identifies a table row.
type rowKey struct {
	system, transport, pattern string
	size                       int
	mode                       string
	inflight                   int
}

type row struct {
	key      rowKey
	order    int
	ok       []Result
	total    int
	lastErr  string
	msgsPerS float64
	mbPerS   float64
	p50, p99 int64
	// pair is the median over rounds of p50 / PairRawP50ns: loft against a
	// raw socket between the same two processes; 0 where not measured.
	pair float64
}

// writeTable prints, per case, the medians over rounds and the ratio to the
// matching "raw" row.
func writeTable(w io.Writer, results []Result, cases []Case) error {
	return renderTable(w, results, cases, false)
}

// WriteTable writes results (read back with ReadJSON, say) as the plain
// table Run prints.
func WriteTable(w io.Writer, results []Result) error {
	return renderTable(w, results, Cases(), false)
}

// WriteMarkdown writes results (of Run, or read back with ReadJSON) as a
// Markdown table of medians over rounds, with each row compared to its
// baseline in the same run: loft's message cases with the raw transport
// (msgs/s, and p50 for ping-pong; shared memory with raw Unix), RPC with
// gRPC-go and net/rpc on the same transport (shared memory with Unix), and
// remote-object patterns with one plain call on the same transport.
func WriteMarkdown(w io.Writer, results []Result) error {
	return renderTable(w, results, Cases(), true)
}

// ReadJSON reads the JSON lines written by Run (Options.JSON).
func ReadJSON(r io.Reader) ([]Result, error) {
	var out []Result
	dec := json.NewDecoder(r)
	for {
		var res Result
		if err := dec.Decode(&res); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("bench: reading results: %w", err)
		}
		out = append(out, res)
	}
}

func renderTable(w io.Writer, results []Result, cases []Case, markdown bool) error {
	rawTransport := map[[3]string]string{}
	for _, c := range cases {
		if c.RawTransport != "" {
			rawTransport[[3]string{c.System, c.Transport, c.Pattern}] = c.RawTransport
		}
	}
	rows := map[rowKey]*row{}
	var list []*row
	patOrder, trOrder, sysOrder := map[string]int{}, map[string]int{}, map[string]int{}
	rank := func(m map[string]int, s string) {
		if _, ok := m[s]; !ok {
			m[s] = len(m)
		}
	}
	for _, r := range results {
		mode := r.Mode
		if r.Pinned {
			mode += ", pinned" // each side on its own CPU
		}
		k := rowKey{r.System, r.Transport, r.Pattern, r.Size, mode, r.Inflight}
		rw := rows[k]
		if rw == nil {
			rw = &row{key: k, order: len(list)}
			rows[k] = rw
			list = append(list, rw)
			rank(patOrder, r.Pattern)
			rank(trOrder, r.Transport)
			rank(sysOrder, r.System)
		}
		rw.total++
		if r.Err != "" {
			rw.lastErr = r.Err
			continue
		}
		rw.ok = append(rw.ok, r)
	}
	anyInflight := false
	for _, rw := range list {
		rw.msgsPerS = medianF(rw.ok, func(r Result) float64 { return r.MsgsPerS })
		rw.mbPerS = medianF(rw.ok, func(r Result) float64 { return r.MBPerS })
		rw.p50 = int64(medianF(rw.ok, func(r Result) float64 { return float64(r.P50ns) }))
		rw.p99 = int64(medianF(rw.ok, func(r Result) float64 { return float64(r.P99ns) }))
		var paired []Result
		for _, r := range rw.ok {
			if r.PairRawP50ns > 0 && r.P50ns > 0 {
				paired = append(paired, r)
			}
		}
		rw.pair = medianF(paired, func(r Result) float64 { return float64(r.P50ns) / float64(r.PairRawP50ns) })
		if rw.key.inflight != 0 {
			anyInflight = true
		}
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i].key, list[j].key
		if patOrder[a.pattern] != patOrder[b.pattern] {
			return patOrder[a.pattern] < patOrder[b.pattern]
		}
		if a.size != b.size {
			return a.size < b.size
		}
		if trOrder[a.transport] != trOrder[b.transport] {
			return trOrder[a.transport] < trOrder[b.transport]
		}
		if sysOrder[a.system] != sysOrder[b.system] {
			return sysOrder[a.system] < sysOrder[b.system]
		}
		return list[i].order < list[j].order
	})
	// The "raw" and "raw-batched" rows per transport, pattern and size.
	raw := map[[4]string]float64{}
	for _, rw := range list {
		if (rw.key.system == "raw" || rw.key.system == "raw-batched") && len(rw.ok) > 0 {
			raw[[4]string{rw.key.system, rw.key.transport, rw.key.pattern, strconv.Itoa(rw.key.size)}] = rw.msgsPerS
		}
	}

	if markdown {
		return writeMarkdownRows(w, list, raw, rawTransport)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "PATTERN\tSIZE\tTRANSPORT\tSYSTEM\tMODE\t"
	if anyInflight {
		header += "INFLIGHT\t"
	}
	header += "MSGS/S\tMB/S\tP50\tP99\tVS RAW\tROUNDS"
	fmt.Fprintln(tw, header)
	for _, rw := range list {
		k := rw.key
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t", k.pattern, formatSize(k.size), k.transport, k.system, k.mode)
		if anyInflight {
			if k.inflight != 0 {
				line += strconv.Itoa(k.inflight) + "\t"
			} else {
				line += "\t"
			}
		}
		rounds := fmt.Sprintf("%d/%d", len(rw.ok), rw.total)
		if len(rw.ok) == 0 {
			line += fmt.Sprintf("-\t-\t-\t-\t\t%s\terror: %s", rounds, truncate(rw.lastErr, 200))
			fmt.Fprintln(tw, line)
			continue
		}
		vs := ""
		rt := k.transport
		if t, ok := rawTransport[[3]string{k.system, k.transport, k.pattern}]; ok {
			rt = t
		}
		if base, ok := raw[[4]string{baseline(k.system), rt, k.pattern, strconv.Itoa(k.size)}]; ok && base > 0 {
			vs = fmt.Sprintf("%.2fx", rw.msgsPerS/base)
			if b := baseline(k.system); b != "raw" {
				vs += " " + b
			}
		}
		if rw.pair > 0 {
			vs += fmt.Sprintf(", p50 %.2fx raw in the same processes", rw.pair)
		}
		line += fmt.Sprintf("%s\t%.1f\t%s\t%s\t%s\t%s", formatCount(rw.msgsPerS), rw.mbPerS,
			formatNs(rw.p50), formatNs(rw.p99), vs, rounds)
		if rw.lastErr != "" {
			line += "\terror: " + truncate(rw.lastErr, 200)
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// medianF is the median of f over rs (the mean of the middle two for an even
// count); 0 for none.
func medianF(rs []Result, f func(Result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func formatSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + " KiB"
	default:
		return strconv.Itoa(n) + " B"
	}
}

func formatNs(ns int64) string {
	if ns <= 0 {
		return "-"
	}
	d := time.Duration(ns)
	switch {
	case d < time.Microsecond:
		return strconv.FormatInt(ns, 10) + "ns"
	case d < time.Millisecond:
		return strconv.FormatFloat(float64(ns)/1e3, 'f', 1, 64) + "us"
	case d < time.Second:
		return strconv.FormatFloat(float64(ns)/1e6, 'f', 2, 64) + "ms"
	default:
		return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// writeMarkdownRows writes the rows of renderTable as Markdown, with the
// comparisons WriteMarkdown describes.
func writeMarkdownRows(w io.Writer, list []*row, raw map[[4]string]float64, rawTransport map[[3]string]string) error {
	byKey := map[rowKey]*row{}
	for _, rw := range list {
		if len(rw.ok) > 0 {
			byKey[rw.key] = rw
		}
	}
	ratio := func(a, b float64) string { return strconv.FormatFloat(a/b, 'f', 2, 64) + "x" }
	fmt.Fprintln(w, "| pattern | size | transport | system | mode | in flight | msgs/s | MB/s | p50 | p99 | compared | rounds |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, rw := range list {
		k := rw.key
		inflight := ""
		if k.inflight != 0 {
			inflight = strconv.Itoa(k.inflight)
		}
		rounds := fmt.Sprintf("%d/%d", len(rw.ok), rw.total)
		if len(rw.ok) == 0 {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | - | - | - | - | error: %s | %s |\n", k.pattern, formatSize(k.size), k.transport, k.system, k.mode, inflight, truncate(rw.lastErr, 120), rounds)
			continue
		}
		base := k.transport
		if base == "shm" {
			base = "unix"
		}
		var cmp string
		switch k.system {
		case "raw", "raw-batched", "go-chan", "grpc":
		case "loft-rpc", "net/rpc":
			if g := byKey[rowKey{"grpc", base, k.pattern, k.size, "blocking", k.inflight}]; g != nil && g.p50 > 0 && g.msgsPerS > 0 {
				cmp = "p50 " + ratio(float64(rw.p50), float64(g.p50)) + ", calls/s " + ratio(rw.msgsPerS, g.msgsPerS) + " gRPC"
				if n := byKey[rowKey{"net/rpc", base, k.pattern, k.size, "blocking", k.inflight}]; k.system == "loft-rpc" && n != nil && n.msgsPerS > 0 {
					cmp += ", " + ratio(rw.msgsPerS, n.msgsPerS) + " net/rpc"
				}
			}
		case "loft-rmi":
			if c := byKey[rowKey{k.system, k.transport, "call", k.size, k.mode, k.inflight}]; c != nil && k.pattern != "call" && c.p50 > 0 {
				cmp = "p50 " + ratio(float64(rw.p50), float64(c.p50)) + " one call"
			}
		default:
			rt := k.transport
			if t, ok := rawTransport[[3]string{k.system, k.transport, k.pattern}]; ok {
				rt = t
			}
			if b, ok := raw[[4]string{baseline(k.system), rt, k.pattern, strconv.Itoa(k.size)}]; ok && b > 0 {
				cmp = "msgs/s " + ratio(rw.msgsPerS, b) + " " + baseline(k.system) + " " + rt
				if r := byKey[rowKey{"raw", rt, k.pattern, k.size, "blocking", 0}]; r != nil && rw.p50 > 0 && r.p50 > 0 {
					cmp += ", p50 " + ratio(float64(rw.p50), float64(r.p50))
				}
				if rw.pair > 0 {
					cmp += fmt.Sprintf(" (%.2fx raw in the same processes)", rw.pair)
				}
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %.0f | %s | %s | %s | %s |\n", k.pattern, formatSize(k.size), k.transport, k.system, k.mode, inflight,
			formatCount(rw.msgsPerS), rw.mbPerS, formatNs(rw.p50), formatNs(rw.p99), cmp, rounds)
	}
	return nil
}

// baseline is the raw system a loft row is compared with: batches with
// batched writes, everything else with one write per message.
func baseline(system string) string {
	if system == "loft-batched" {
		return "raw-batched"
	}
	return "raw"
}
