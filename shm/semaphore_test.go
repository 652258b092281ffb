//go:build linux

package shm

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestSemaphoreBasic(t *testing.T) {
	r, _ := testRegion(t, 1024)
	s, err := NewSemaphore(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Init(-1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Init(-1): %v", err)
	}
	if err := s.Init(2); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if !s.TryAcquire(1) {
			t.Fatalf("TryAcquire #%d of 2 available permits failed", i+1)
		}
	}
	if s.TryAcquire(1) || s.Count() != 0 {
		t.Fatalf("TryAcquire beyond the count succeeded (count %d)", s.Count())
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Acquire(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with no permits: %v, want DeadlineExceeded", err)
	}
	res := make(chan error)
	go func() { res <- s.Acquire(context.Background(), 2) }()
	s.Release(1)
	waitFor(t, 5*time.Second, "Acquire(2) to sleep", func() bool { return atomic.LoadUint32(s.waiters) != 0 })
	select {
	case <-res:
		t.Fatal("Acquire(2) returned with 1 permit")
	default:
	}
	s.Release(1)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	// A Release by a process that holds nothing adds permits.
	if err := s.Release(3); err != nil {
		t.Fatal(err)
	}
	if s.Count() != 3 {
		t.Fatalf("Count %d, want 3", s.Count())
	}
	for _, n := range []int{0, -1} {
		if err := s.Acquire(context.Background(), n); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Acquire(%d): %v", n, err)
		}
		if err := s.Release(n); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Release(%d): %v", n, err)
		}
	}
	if err := s.Release(MaxSemaphoreCount); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Release past the maximum: %v", err)
	}
	if s.Count() != 3 {
		t.Fatalf("Count %d after a failed Release, want 3", s.Count())
	}
	if s.Reclaim() != 0 {
		t.Fatal("Reclaim took permits of a live process")
	}
}

// TestSemaphoreProcesses: 4 processes share 2 permits.
func TestSemaphoreProcesses(t *testing.T) {
	r, opts := testRegion(t, childSize)
	s, _ := NewSemaphore(r, offLock)
	const limit, procs = 2, 4
	s.Init(limit)
	n := iterations(10000)
	var cs []*child
	for range procs {
		cs = append(cs, startChild(t, "sem-worker", opts, "r", n, limit))
	}
	for _, c := range cs {
		c.expect("ready")
	}
	maxUse, _ := NewCounter(r, offCount2)
	overlapped := runUntil(r, func() bool { return maxUse.Load() >= limit })
	for _, c := range cs {
		if got := c.line(); got != "done 0" {
			t.Errorf("worker said %q, want \"done 0\" (more than %d holders at once)", got, limit)
		}
		c.finish()
	}
	t.Logf("max holders at once: %d (limit %d)", maxUse.Load(), limit)
	if maxUse.Load() > limit {
		t.Fatal("limit exceeded")
	}
	if !overlapped {
		t.Fatal("never saw the limit reached in 20 s")
	}
	if s.Count() != limit {
		t.Fatalf("Count %d at the end, want %d", s.Count(), limit)
	}
	if !s.holders.empty() {
		t.Fatal("holder slots left in use")
	}
}

// TestSemaphoreHolderKilled: permits of a killed holder come back to a
// blocked Acquire.
func TestSemaphoreHolderKilled(t *testing.T) {
	r, opts := testRegion(t, childSize)
	s, _ := NewSemaphore(r, offLock)
	s.Init(3)
	for round := range iterations(4) {
		c := startChild(t, "sem-hold", opts, "r", 2)
		c.expect("acquired nil")
		if s.Count() != 1 {
			t.Fatalf("Count %d with 2 of 3 held", s.Count())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res := make(chan time.Time, 1)
		go func() {
			if err := s.Acquire(ctx, 3); err != nil {
				t.Error(err)
			}
			res <- time.Now()
		}()
		waitFor(t, 5*time.Second, "Acquire to block", func() bool { return s.Count() == 1 && atomic.LoadUint32(s.waiters) != 0 })
		t0 := time.Now()
		c.kill()
		if round%2 == 0 {
			c.reap()
		}
		t.Logf("round %d: permits of the killed holder back after %v", round, (<-res).Sub(t0))
		cancel()
		if err := s.Release(3); err != nil {
			t.Fatal(err)
		}
		c.reap()
	}
	// Reclaim without a waiter.
	c := startChild(t, "sem-hold", opts, "r", 3)
	c.expect("acquired nil")
	c.kill()
	c.reap()
	if got := s.Reclaim(); got != 3 || s.Count() != 3 {
		t.Fatalf("Reclaim = %d, Count = %d, want 3 and 3", got, s.Count())
	}
}
