//go:build linux

package shm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// seqVal is 77 bytes: ten uint64 words that a writer always sets equal, plus
// a tail that is not a multiple of 8 bytes.
type seqVal struct {
	W    [9]uint64
	Tail [4]byte
	Last uint8
}

func makeSeqVal(i uint64) seqVal {
	var v seqVal
	for k := range v.W {
		v.W[k] = i
	}
	for k := range v.Tail {
		v.Tail[k] = byte(i)
	}
	v.Last = byte(i >> 8)
	return v
}

// check reports whether v could have been written by one Store.
func (v seqVal) check() bool {
	return v == makeSeqVal(v.W[0])
}

func loadU32(p *uint32) uint32 { return atomic.LoadUint32(p) }

func TestSeqlockTypes(t *testing.T) {
	r, _ := testRegion(t, 1024)
	type ok1 struct {
		A int32
		B [3]struct{ X, Y float64 }
		C bool
		D complex128
	}
	if _, err := NewSeqlock[ok1](r, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSeqlock[[16]byte](r, 0); err != nil {
		t.Fatal(err)
	}
	type withPtr struct {
		A int
		B struct{ P *int }
	}
	check := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, ErrType) {
			t.Errorf("NewSeqlock[%s]: %v, want ErrType", name, err)
		} else {
			t.Log(err)
		}
	}
	_, err := NewSeqlock[withPtr](r, 0)
	check("withPtr", err)
	_, err = NewSeqlock[string](r, 0)
	check("string", err)
	_, err = NewSeqlock[[]int](r, 0)
	check("[]int", err)
	_, err = NewSeqlock[map[int]int](r, 0)
	check("map", err)
	_, err = NewSeqlock[[2]any](r, 0)
	check("[2]any", err)
	_, err = NewSeqlock[uintptr](r, 0)
	check("uintptr", err)
	_, err = NewSeqlock[func()](r, 0)
	check("func", err)
	_, err = NewSeqlock[chan int](r, 0)
	check("chan", err)
	if got := SeqlockSize[seqVal](); got != 16+80 {
		t.Fatalf("SeqlockSize = %d, want 96", got)
	}
}

// TestSeqlockConcurrent: goroutines load while two goroutines store; a load
// must never mix two stores.
func TestSeqlockConcurrent(t *testing.T) {
	r, _ := testRegion(t, 1024)
	s, err := NewSeqlock[seqVal](r, 8)
	if err != nil {
		t.Fatal(err)
	}
	if v := s.Load(); v != (seqVal{}) {
		t.Fatal("zeroed Seqlock does not hold the zero value")
	}
	n := uint64(iterations(50000))
	var stop atomic.Bool
	var loads, torn, changes atomic.Int64
	done := make(chan struct{})
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			var last seqVal
			for !stop.Load() {
				v := s.Load()
				loads.Add(1)
				if !v.check() {
					torn.Add(1)
				}
				if v != last {
					changes.Add(1)
					last = v
				}
			}
		}()
	}
	wdone := make(chan struct{})
	for w := range uint64(2) {
		go func() {
			for i := uint64(1); i <= n; i++ {
				s.Store(makeSeqVal(i*2 + w))
				busy(100) // writers that never pause starve readers, by design
			}
			wdone <- struct{}{}
		}()
	}
	<-wdone
	<-wdone
	stop.Store(true)
	<-done
	<-done
	t.Logf("%d loads, %d distinct values seen, %d torn", loads.Load(), changes.Load(), torn.Load())
	if torn.Load() != 0 {
		t.Fatalf("%d torn reads", torn.Load())
	}
	if changes.Load() < 2 {
		t.Fatal("readers never saw the writers' values change: the test did not overlap")
	}
	if v := s.Load(); !v.check() || v.W[0] < 2*n {
		t.Fatalf("final value %v", v.W[0])
	}
}

// TestSeqlockProcesses: a child process stores while this one loads.
func TestSeqlockProcesses(t *testing.T) {
	r, opts := testRegion(t, childSize)
	s, _ := NewSeqlock[seqVal](r, offLock)
	want := iterations(2000) // distinct values to see
	c := startChild(t, "seqlock-writer", opts, "r")
	c.expect("ready")
	var loads, changes, torn int
	var last seqVal
	deadline := time.Now().Add(10 * time.Second)
	for changes < want && time.Now().Before(deadline) {
		v := s.Load()
		loads++
		if !v.check() {
			torn++
		}
		if v.W[0] < last.W[0] {
			t.Fatalf("went back from %d to %d", last.W[0], v.W[0])
		}
		if v != last {
			changes++
			last = v
		}
	}
	c.send("stop")
	var n uint64
	if _, err := fmt.Sscanf(c.line(), "done %d", &n); err != nil {
		t.Fatal(err)
	}
	c.finish()
	t.Logf("%d loads, %d distinct values seen of %d stored, %d torn", loads, changes, n, torn)
	if torn != 0 {
		t.Fatalf("%d torn reads", torn)
	}
	if changes < want {
		t.Fatalf("saw only %d distinct values in 10s", changes)
	}
	if v := s.Load(); v.W[0] != n || !v.check() {
		t.Fatalf("final value %d, want %d", v.W[0], n)
	}
}

// TestSeqlockDeadWriter: a writer that died mid-Store leaves the sequence odd;
// Load waits and the next Store repairs it.
func TestSeqlockDeadWriter(t *testing.T) {
	r, _ := testRegion(t, 1024)
	s, _ := NewSeqlock[seqVal](r, 0)
	s.Store(makeSeqVal(1))
	pid, tag, _ := selfID()
	// Pretend a previous process with our PID died inside Store.
	atomic.StoreUint64(s.w.p, uint64(pid)|uint64(tag+1)<<32)
	atomic.AddUint32(s.seq, 1)
	atomic.StoreUint64(&s.data[3], 99)
	res := make(chan seqVal, 1)
	go func() { res <- s.Load() }()
	// If the test fails before the repairing Store, repair now, before the
	// region is unmapped under the Load (cleanups run last first).
	repaired := false
	t.Cleanup(func() {
		if !repaired {
			s.Store(makeSeqVal(2))
			<-res
		}
	})
	select {
	case v := <-res:
		repaired = true // (nothing left to wait for)
		t.Fatalf("Load returned %v while a Store was unfinished", v.W)
	case <-time.After(30 * time.Millisecond): // a negative check, not synchronisation
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.LoadContext(ctx); !errors.Is(err, ErrWriterDead) {
		t.Fatalf("LoadContext with a dead writer: %v, want ErrWriterDead", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel2()
	if _, err := s.LoadContext(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LoadContext with a 5ms deadline: %v, want DeadlineExceeded", err)
	}
	s.Store(makeSeqVal(2))
	repaired = true
	if v := <-res; v != makeSeqVal(2) {
		t.Fatalf("Load after the repairing Store: %v", v)
	}
	if w := atomic.LoadUint64(s.w.p); w != 0 {
		t.Fatalf("writer word %#x after Store", w)
	}
	if seq := atomic.LoadUint32(s.seq); seq&1 != 0 {
		t.Fatalf("seq %d odd", seq)
	}
}
