package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// maxRoundTrips bounds MeasureRoundTrips whatever the budget.
const maxRoundTrips = 50_000_000

// MeasureRoundTrips calls rt repeatedly, first for a short warm-up (a tenth
// of budget, at most 100 ms, unrecorded), then for about budget, recording
// the duration of every call in an HDR histogram. It returns a Result with
// Msgs (round trips), MsgsPerS (round trips per second), P50ns and P99ns set.
// It stops at the first error from rt, and when ctx ends. Each recorded
// duration includes one clock read and one histogram update, about 30 ns.
func MeasureRoundTrips(ctx context.Context, budget time.Duration, rt func() error) (Result, error) {
	warm := min(budget/10, 100*time.Millisecond)
	for start := time.Now(); time.Since(start) < warm; {
		if err := rt(); err != nil {
			return Result{}, fmt.Errorf("warm-up round trip: %w", err)
		}
		if ctx.Err() != nil {
			return Result{}, context.Cause(ctx)
		}
	}
	h := hdrhistogram.New(1, int64(time.Minute), 3)
	var n int64
	// time.Since on a fixed base reads only the monotonic clock: half the
	// cost of time.Now (about 25 ns against 50 ns on a KVM guest).
	base := time.Now()
	var t0 time.Duration
	for n < maxRoundTrips {
		if err := rt(); err != nil {
			return Result{}, fmt.Errorf("round trip %d: %w", n, err)
		}
		t1 := time.Since(base)
		h.RecordValue(max(int64(t1-t0), 1))
		t0 = t1
		n++
		if t1 >= budget {
			break
		}
		if n&63 == 0 && ctx.Err() != nil {
			return Result{}, context.Cause(ctx)
		}
	}
	el := t0
	return Result{
		Msgs:     n,
		MsgsPerS: float64(n) / el.Seconds(),
		P50ns:    h.ValueAtQuantile(50),
		P99ns:    h.ValueAtQuantile(99),
	}, nil
}

// MeasureRoundTripsAt is MeasureRoundTrips at a fixed rate of round trips
// per second (rate <= 0: as fast as possible). Only the round trips are
// timed, not the pauses between them. A low rate shows what a message costs
// when the other side has gone to sleep, which saturation hides.
func MeasureRoundTripsAt(ctx context.Context, budget time.Duration, rate int, rt func() error) (Result, error) {
	if rate <= 0 {
		return MeasureRoundTrips(ctx, budget, rt)
	}
	period := time.Second / time.Duration(rate)
	h := hdrhistogram.New(1, int64(time.Minute), 3)
	var n int64
	start := time.Now()
	next := start
	for time.Since(start) < budget {
		if d := time.Until(next); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return Result{}, context.Cause(ctx)
			}
		}
		next = next.Add(period)
		t0 := time.Now()
		if err := rt(); err != nil {
			return Result{}, fmt.Errorf("round trip %d: %w", n, err)
		}
		h.RecordValue(max(int64(time.Since(t0)), 1))
		n++
	}
	el := time.Since(start)
	return Result{Msgs: n, MsgsPerS: float64(n) / el.Seconds(), P50ns: h.ValueAtQuantile(50), P99ns: h.ValueAtQuantile(99)}, nil
}

// pairBlock is how many round trips MeasurePaired runs of one side before
// it switches to the other.
const pairBlock = 256

// MeasurePaired measures two kinds of round trip between the same two
// processes, a and b, in alternating blocks of pairBlock round trips, after
// a warm-up of each, until each has run for about budget. Both then see
// the same CPU placement and the same load from the rest of the machine,
// which moves a ping-pong's p50 by a third between separate runs here, so
// the ratio of the two is much steadier than that of two separate
// measurements. It returns a Result for each, as MeasureRoundTrips does.
func MeasurePaired(ctx context.Context, budget time.Duration, a, b func() error) (Result, Result, error) {
	warm := min(budget/10, 100*time.Millisecond)
	for _, rt := range []func() error{a, b} {
		for start := time.Now(); time.Since(start) < warm; {
			if err := rt(); err != nil {
				return Result{}, Result{}, fmt.Errorf("warm-up round trip: %w", err)
			}
		}
	}
	type side struct {
		rt  func() error
		h   *hdrhistogram.Histogram
		n   int64
		el  time.Duration
		out Result
	}
	sides := [2]*side{{rt: a}, {rt: b}}
	for _, s := range sides {
		s.h = hdrhistogram.New(1, int64(time.Minute), 3)
	}
	base := time.Now()
	for (sides[0].el < budget || sides[1].el < budget) && sides[0].n+sides[1].n < 2*maxRoundTrips {
		if ctx.Err() != nil {
			return Result{}, Result{}, context.Cause(ctx)
		}
		for _, s := range sides {
			t0 := time.Since(base)
			start := t0
			for range pairBlock {
				if err := s.rt(); err != nil {
					return Result{}, Result{}, fmt.Errorf("round trip %d: %w", s.n, err)
				}
				t1 := time.Since(base)
				s.h.RecordValue(max(int64(t1-t0), 1))
				t0 = t1
				s.n++
			}
			s.el += t0 - start
		}
	}
	for _, s := range sides {
		s.out = Result{Msgs: s.n, MsgsPerS: float64(s.n) / s.el.Seconds(), P50ns: s.h.ValueAtQuantile(50), P99ns: s.h.ValueAtQuantile(99)}
	}
	return sides[0].out, sides[1].out, nil
}
