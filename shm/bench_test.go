//go:build linux

package shm

import (
	"context"
	"testing"
)

func BenchmarkMutexUncontended(b *testing.B) {
	r, _ := testRegion(b, 64)
	m, _ := NewMutex(r, 0)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		m.Lock(ctx)
		m.Unlock()
	}
}

func BenchmarkMutexGoroutines(b *testing.B) {
	r, _ := testRegion(b, 64)
	m, _ := NewMutex(r, 0)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Lock(ctx)
			m.Unlock()
		}
	})
}

func BenchmarkCounterAdd(b *testing.B) {
	r, _ := testRegion(b, 64)
	c, _ := NewCounter(r, 0)
	for b.Loop() {
		c.Add(1)
	}
}

func BenchmarkSeqlockLoad(b *testing.B) {
	r, _ := testRegion(b, 1024)
	s, _ := NewSeqlock[seqVal](r, 0)
	s.Store(makeSeqVal(1))
	b.ReportAllocs()
	b.SetBytes(int64(SeqlockSize[seqVal]() - 16))
	for b.Loop() {
		s.Load()
	}
}

func BenchmarkSeqlockStore(b *testing.B) {
	r, _ := testRegion(b, 1024)
	s, _ := NewSeqlock[seqVal](r, 0)
	v := makeSeqVal(1)
	b.ReportAllocs()
	for b.Loop() {
		s.Store(v)
	}
}

// BenchmarkEventPingPong measures a cross-process round trip: this process
// signals a child through one Event and waits for its answer on another.
func BenchmarkEventPingPong(b *testing.B) {
	r, opts := testRegion(b, childSize)
	ping, _ := NewEvent(r, offEvent1)
	pong, _ := NewEvent(r, offEvent2)
	c, _ := NewCounter(r, offCount1)
	ch := startChild(b, "event-pong", opts, "r", b.N)
	ch.expect("ready")
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		seen := pong.Seq()
		c.Add(1)
		ping.Signal()
		for c.Load() != int64(2*i+2) {
			seen, _ = pong.Wait(ctx, seen)
		}
	}
	b.StopTimer()
	ch.expect("done")
	ch.finish()
}
