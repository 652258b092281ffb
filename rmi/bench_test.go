package rmi

import (
	"context"
	"slices"
	"testing"
	"time"
)

// chains used by the benchmarks and the timing test.
func oneCall(ctx context.Context, s Svc) error { _, err := s.Echo(ctx, 1); return err }

func callback(ctx context.Context, s Svc, l Listener) error { _, err := s.Job(ctx, 1, l); return err }

func chain5(ctx context.Context, s Svc, pipe bool) error {
	c := ctx
	if pipe {
		c = Pipeline(ctx)
	}
	f, err := s.Open(c, "x")
	if err != nil {
		return err
	}
	f2, err := f.Next(c)
	if err != nil {
		return err
	}
	f3, err := f2.Next(c)
	if err != nil {
		return err
	}
	f4, err := f3.Next(c)
	if err != nil {
		return err
	}
	_, err = f4.Read(ctx)
	Release(f)
	Release(f2)
	Release(f3)
	Release(f4)
	return err
}

func benchSetup(b testing.TB, noShm bool) (context.Context, Svc) {
	ctx := testCtx(b)
	e := newEnv(b, noShm)
	c := startChild(b, e.dir, noShm)
	return ctx, lookupSvc(b, ctx, e, c)
}

func benchAll(b *testing.B, noShm bool) {
	ctx, s := benchSetup(b, noShm)
	l := &progress{}
	cases := map[string]func() error{
		"call":        func() error { return oneCall(ctx, s) },
		"callback":    func() error { return callback(ctx, s, l) },
		"pipeline5":   func() error { return chain5(ctx, s, true) },
		"sequential5": func() error { return chain5(ctx, s, false) },
	}
	for _, name := range []string{"call", "callback", "pipeline5", "sequential5"} {
		fn := cases[name]
		b.Run(name, func(b *testing.B) {
			// ns/op is the mean; the median and the 99th percentile
			// show how far a tail (a side descheduled, a parked
			// wake-up) pulls it.
			ds := make([]time.Duration, 0, 1<<16)
			for b.Loop() {
				t0 := time.Now()
				if err := fn(); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(t0))
			}
			slices.Sort(ds)
			b.ReportMetric(float64(ds[len(ds)/2]), "p50-ns")
			b.ReportMetric(float64(ds[len(ds)*99/100]), "p99-ns")
		})
	}
}

func BenchmarkSHM(b *testing.B)  { benchAll(b, false) }
func BenchmarkUnix(b *testing.B) { benchAll(b, true) }

// medians measures the fns interleaved, n rounds, and returns each median.
func medians(n int, fns ...func() error) ([]time.Duration, error) {
	ds := make([][]time.Duration, len(fns))
	for range n {
		for i, fn := range fns {
			t0 := time.Now()
			if err := fn(); err != nil {
				return nil, err
			}
			ds[i] = append(ds[i], time.Since(t0))
		}
	}
	out := make([]time.Duration, len(fns))
	for i, d := range ds {
		slices.Sort(d)
		out[i] = d[len(d)/2]
	}
	return out, nil
}

// TestProcPipelineTiming measures one call, 5 pipelined calls and the same
// 5 calls one after another, side by side in one run. The bound checked
// here is loose (the race detector and a shared machine distort times);
// the figures are logged, and BenchmarkSHM gives them without -race.
func TestProcPipelineTiming(t *testing.T) {
	ctx, s := benchSetup(t, false)
	m, err := medians(300,
		func() error { return oneCall(ctx, s) },
		func() error { return chain5(ctx, s, true) },
		func() error { return chain5(ctx, s, false) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("median: call %v, pipeline5 %v (%.2fx), sequential5 %v (%.2fx)", m[0], m[1], float64(m[1])/float64(m[0]), m[2], float64(m[2])/float64(m[0]))
	if m[1] >= m[2] {
		t.Fatalf("pipelined chain (%v) not faster than sequential (%v)", m[1], m[2])
	}
}
