package loft

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// handlePair opens two nodes, a receiver of "work" on one and a sender to
// it on the other.
func handlePair(t *testing.T) (*Sender, *Receiver) {
	t.Helper()
	s, r, _ := channelPair(t, "work", 64)
	return s, r
}

// channelPair opens two nodes, a receiver of name with capacity on the
// first and a sender to it on the second, attached; it returns the nodes
// too.
func channelPair(t *testing.T, name string, capacity int) (*Sender, *Receiver, []*Node) {
	t.Helper()
	return channelPairWith(t, Options{}, name, capacity)
}

// channelPairWith is channelPair with nodes opened with opts.
func channelPairWith(t *testing.T, opts Options, name string, capacity int) (*Sender, *Receiver, []*Node) {
	t.Helper()
	ns := testNodesWith(t, 2, opts)
	r, s := attachPair(t, context.Background(), ns, name, capacity)
	return s, r, ns
}

// attachPair opens a receiver of name with capacity on ns[0] and a sender
// to it on ns[1], and waits until the sender is attached.
func attachPair(t *testing.T, ctx context.Context, ns []*Node, name string, capacity int) (*Receiver, *Sender) {
	t.Helper()
	r, err := ns[0].Receive(ctx, name, ChannelOptions{Capacity: capacity})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ns[1].Sender(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReceivers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return r, s
}

// TestHandleOneAtATime: messages sent one at a time to Handle with four
// workers wake no waiting worker (one receives; the others wait aside),
// and every message is handled once, in order.
func TestHandleOneAtATime(t *testing.T) {
	s, r := handlePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan byte)
	hctx, stop := context.WithCancel(ctx)
	ended := make(chan error, 1)
	go func() {
		ended <- r.Handle(hctx, 4, func(_ context.Context, m Message) { got <- m.Data[0] })
	}()
	const n = 300
	r.mu.Lock()
	before := r.wakes
	r.mu.Unlock()
	for i := range n {
		if err := s.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-got:
			if b != byte(i) {
				t.Fatalf("message %d handled as %d", i, b)
			}
		case <-ctx.Done():
			t.Fatalf("message %d not handled", i)
		}
	}
	r.mu.Lock()
	woken := r.wakes - before
	r.mu.Unlock()
	stop()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("Handle returned %v, want context.Canceled", err)
	}
	// (Four workers all waiting in Recv woke one for each message.)
	if woken > n/20 {
		t.Fatalf("%d waiting workers woken for %d messages one at a time", woken, n)
	}
}

// TestHandleBlockedWorker: with a worker blocked in fn (on something
// other than its context), the next message is still handled by another
// worker (within handleInline, give or take the machine), and concurrency
// is never exceeded.
func TestHandleBlockedWorker(t *testing.T) {
	s, r := handlePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	release := make(chan struct{})
	handled := make(chan byte, 4)
	var running, most atomic.Int32
	ended := make(chan error, 1)
	hctx, stop := context.WithCancel(ctx)
	go func() {
		ended <- r.Handle(hctx, 2, func(_ context.Context, m Message) {
			n := running.Add(1)
			for {
				old := most.Load()
				if n <= old || most.CompareAndSwap(old, n) {
					break
				}
			}
			if m.Data[0] == 0 {
				<-release
			}
			running.Add(-1)
			handled <- m.Data[0]
		})
	}()
	// A quick message first: the next fn runs with nobody else
	// receiving (not after a slow one).
	if err := s.Send(ctx, []byte{9}); err != nil {
		t.Fatal(err)
	}
	if b := <-handled; b != 9 {
		t.Fatalf("handled %d, want 9", b)
	}
	if err := s.Send(ctx, []byte{0}); err != nil {
		t.Fatal(err)
	}
	for running.Load() == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	t0 := time.Now()
	if err := s.Send(ctx, []byte{1}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-handled:
		if b != 1 {
			t.Fatalf("handled %d first, want 1", b)
		}
		t.Logf("message 1 handled %v after it was sent, with message 0 blocking", time.Since(t0))
	case <-time.After(5 * time.Second):
		t.Fatal("message 1 not handled while message 0 blocks its worker")
	}
	close(release)
	if b := <-handled; b != 0 {
		t.Fatalf("handled %d, want 0", b)
	}
	stop()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("Handle returned %v", err)
	}
	if m := most.Load(); m > 2 {
		t.Fatalf("%d handlers at once with concurrency 2", m)
	}
}

// TestHandleSlowKeepsOneReceiving: after an fn that took long, the next
// runs with another worker receiving, so a message sent meanwhile is
// handled at once, not after handleInline.
func TestHandleSlowKeepsOneReceiving(t *testing.T) {
	s, r := handlePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	release := make(chan struct{}, 4)
	handled := make(chan byte, 4)
	ended := make(chan error, 1)
	hctx, stop := context.WithCancel(ctx)
	go func() {
		ended <- r.Handle(hctx, 2, func(_ context.Context, m Message) {
			if m.Data[0] < 2 {
				<-release
			}
			handled <- m.Data[0]
		})
	}()
	// Message 0 is slow (held 20 ms): Handle learns that fn is slow.
	if err := s.Send(ctx, []byte{0}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(20*time.Millisecond, func() { release <- struct{}{} })
	if b := <-handled; b != 0 {
		t.Fatalf("handled %d, want 0", b)
	}
	// Message 1 blocks; message 2, sent while it does, must be handled by
	// another worker that was receiving, not one the watchdog set
	// receiving after handleInline.
	wakes := handleWatchdogWakes.Load()
	if err := s.Send(ctx, []byte{1}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := s.Send(ctx, []byte{2}); err != nil {
		t.Fatal(err)
	}
	b := <-handled
	took := time.Since(t0)
	if b != 2 {
		t.Fatalf("handled %d, want 2", b)
	}
	release <- struct{}{}
	<-handled
	stop()
	<-ended
	if n := handleWatchdogWakes.Load() - wakes; n != 0 {
		t.Fatalf("message 2 handled %v after it was sent behind a slow fn, by a worker the watchdog woke: nobody was receiving", took)
	}
}

// BenchmarkHandleEcho is a round trip through Handle with four workers in
// another process (the child "handle-echo" sends each message back from
// fn), one message at a time.
func BenchmarkHandleEcho(b *testing.B) {
	for _, tr := range []string{"shm", "unix"} {
		b.Run(tr, func(b *testing.B) {
			s, pong := childEcho(b, "handle-echo", tr == "unix")
			pingPongs(b, s, pong)
		})
	}
}

// TestHandleMixed: two senders, quick and slow handlers mixed, four
// workers: every message handled exactly once, never more than four at
// once, and closing the receiver ends Handle.
func TestHandleMixed(t *testing.T) {
	ns := testNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := ns[0].Receive(ctx, "mixed", ChannelOptions{Capacity: 32})
	if err != nil {
		t.Fatal(err)
	}
	const perSender = 1500
	var seen [2][perSender]atomic.Int32
	var running, most, total atomic.Int32
	ended := make(chan error, 1)
	go func() {
		ended <- r.Handle(ctx, 4, func(_ context.Context, m Message) {
			n := running.Add(1)
			for {
				old := most.Load()
				if n <= old || most.CompareAndSwap(old, n) {
					break
				}
			}
			who, i := int(m.Data[0]), int(m.Data[1])<<8|int(m.Data[2])
			if i%50 == 0 {
				time.Sleep(time.Duration(200+i%800) * time.Microsecond) // a slow handler
			}
			seen[who][i].Add(1)
			running.Add(-1)
			total.Add(1)
		})
	}()
	errs := make(chan error, 2)
	for who := range 2 {
		s, err := ns[1+who].Sender(ctx, "mixed")
		if err != nil {
			t.Fatal(err)
		}
		waitReceivers(t, s, 1)
		go func() {
			for i := range perSender {
				if err := s.Send(ctx, []byte{byte(who), byte(i >> 8), byte(i)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- s.Flush(ctx)
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Flush returned: every message was acknowledged, so handled.
	r.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Handle returned %v after Close, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Handle did not return after the receiver closed")
	}
	if n := total.Load(); n != 2*perSender {
		t.Fatalf("%d messages handled, want %d", n, 2*perSender)
	}
	for who := range 2 {
		for i := range perSender {
			if c := seen[who][i].Load(); c != 1 {
				t.Fatalf("message %d of sender %d handled %d times", i, who, c)
			}
		}
	}
	if m := most.Load(); m > 4 {
		t.Fatalf("%d handlers at once with concurrency 4", m)
	}
	t.Logf("at most %d handlers at once", most.Load())
}

// BenchmarkHandleStream streams messages one way to Handle with four
// workers (two nodes of this process, shared memory between them): with
// -cpu 1, the time per message is the CPU both sides spend on it.
func BenchmarkHandleStream(b *testing.B) {
	s, r := streamPair(b, "shm")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Int64
	all := make(chan struct{})
	ended := make(chan error, 1)
	n := int64(b.N)
	go func() {
		ended <- r.Handle(ctx, 4, func(context.Context, Message) {
			if got.Add(1) == n {
				close(all)
			}
		})
	}()
	msg := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := s.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
	<-all
	b.StopTimer()
	cancel()
	<-ended
}
