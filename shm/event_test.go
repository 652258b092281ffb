//go:build linux

package shm

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestEventBasic(t *testing.T) {
	r, _ := testRegion(t, 64)
	e, err := NewEvent(r, 8)
	if err != nil {
		t.Fatal(err)
	}
	seen := e.Seq()
	if got, err := e.Wait(context.Background(), seen+1); err != nil || got != seen {
		t.Fatalf("Wait with a stale value: %d %v, want immediate %d", got, err, seen)
	}
	start := time.Now()
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if got, err := e.Wait(short, seen); !errors.Is(err, context.DeadlineExceeded) || got != seen {
		t.Fatalf("Wait with no change: %d %v, want DeadlineExceeded", got, err)
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("Wait returned after %v, before its deadline", el)
	}
	// Background context: no slices, woken by Broadcast.
	res := make(chan uint32)
	for range 3 {
		go func() {
			v, _ := e.Wait(context.Background(), seen)
			res <- v
		}()
	}
	waitFor(t, 5*time.Second, "3 waiters", func() bool { return loadU32(e.waiters) == 3 })
	e.Broadcast()
	for range 3 {
		if v := <-res; v != seen+1 {
			t.Fatalf("woken with %d, want %d", v, seen+1)
		}
	}
	// Signal wakes one.
	go func() {
		v, _ := e.Wait(context.Background(), seen+1)
		res <- v
	}()
	waitFor(t, 5*time.Second, "a waiter", func() bool { return loadU32(e.waiters) == 1 })
	e.Signal()
	if v := <-res; v != seen+2 || e.Seq() != seen+2 {
		t.Fatalf("Signal: woken with %d, Seq %d", v, e.Seq())
	}
	// Cancel.
	ctx, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, err := e.Wait(ctx, e.Seq())
		errc <- err
	}()
	waitFor(t, 5*time.Second, "a waiter", func() bool { return loadU32(e.waiters) == 1 })
	cancel2()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Wait: %v", err)
	}
}

// TestEventPingPong: two processes take turns incrementing a counter, each
// waking the other with an Event.
func TestEventPingPong(t *testing.T) {
	r, opts := testRegion(t, childSize)
	ping, _ := NewEvent(r, offEvent1)
	pong, _ := NewEvent(r, offEvent2)
	c, _ := NewCounter(r, offCount1)
	rounds := iterations(2000)
	ch := startChild(t, "event-pong", opts, "r", rounds)
	ch.expect("ready")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	for i := range rounds {
		seen := pong.Seq()
		c.Add(1) // odd: the child's turn
		ping.Signal()
		for c.Load() != int64(2*i+2) {
			var err error
			if seen, err = pong.Wait(ctx, seen); err != nil {
				t.Fatalf("round %d: %v (counter %d)", i, err, c.Load())
			}
		}
	}
	el := time.Since(start)
	ch.expect("done")
	ch.finish()
	if c.Load() != int64(2*rounds) {
		t.Fatalf("counter %d, want %d", c.Load(), 2*rounds)
	}
	t.Logf("%d cross-process round trips, %v each", rounds, el/time.Duration(rounds))
}

func TestCounterProcesses(t *testing.T) {
	r, opts := testRegion(t, childSize)
	c, _ := NewCounter(r, offCount1)
	const procs = 4
	n := iterations(20000)
	var cs []*child
	for range procs {
		ch := startChild(t, "counter-add", opts, "r", n)
		ch.expect("ready")
		cs = append(cs, ch)
	}
	for _, ch := range cs {
		ch.send("go")
	}
	for _, ch := range cs {
		ch.expect("done")
		ch.finish()
	}
	if c.Load() != procs*int64(n) {
		t.Fatalf("counter %d, want %d", c.Load(), procs*n)
	}
	c.Store(5)
	if !c.CompareAndSwap(5, 7) || c.CompareAndSwap(5, 8) || c.Load() != 7 {
		t.Fatal("CompareAndSwap")
	}
	if c.Swap(1) != 7 || c.Add(-3) != -2 {
		t.Fatal("Swap/Add")
	}
}
