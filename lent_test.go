package loft

import (
	"bytes"
	"context"

	"testing"
	"time"
)

// outPools returns the loan pools of s's connections.
func outPools(s *Sender) []*outPool {
	s.mu.Lock()
	var conns []*conn
	for _, l := range s.links {
		conns = append(conns, l.c)
	}
	s.mu.Unlock()
	var pools []*outPool
	for _, c := range conns {
		c.lmu.Lock()
		if c.pool != nil {
			pools = append(pools, c.pool)
		}
		c.lmu.Unlock()
	}
	return pools
}

// poolCount sums count over the loan pools of s's connections, each
// called with its pool locked.
func poolCount(s *Sender, count func(p *outPool) int) int {
	n := 0
	for _, p := range outPools(s) {
		p.mu.Lock()
		n += count(p)
		p.mu.Unlock()
	}
	return n
}

// liveRanges counts the ranges of the loan pools of s's connections that
// are not free, lent or loaned.
func liveRanges(s *Sender) int {
	return poolCount(s, func(p *outPool) int { return len(p.spans) })
}

// awaitingRelease counts the lent ranges of s's pools whose RELEASE has not
// come yet.
func awaitingRelease(s *Sender) int {
	return poolCount(s, func(p *outPool) int {
		n := 0
		for _, st := range p.lent {
			if st&lentReleased == 0 {
				n++
			}
		}
		return n
	})
}

// expectFilled receives messages from..to-1 of size bytes (filled by
// fill) from r, in order, every byte checked.
func expectFilled(t *testing.T, ctx context.Context, r *Receiver, from, to, size int) {
	t.Helper()
	want := make([]byte, size)
	for i := from; i < to; i++ {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		fill(want, i)
		if !bytes.Equal(m.Data, want) {
			t.Fatalf("message %d out of order or damaged (%d bytes)", i, len(m.Data))
		}
	}
}

// expectPoolFree flushes s and checks that no range of its loan pools is
// held.
func expectPoolFree(t *testing.T, ctx context.Context, s *Sender) {
	t.Helper()
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := liveRanges(s); n != 0 {
		t.Fatalf("%d ranges of the loan pool still held after every message was acknowledged", n)
	}
}

// TestLentMessages: over shared memory, messages from bigMessage up are
// lent (copied once into the loan pool, copied out by the receiver), the
// rest framed; in every delivery mode they arrive in order with every byte
// intact although the sender reuses its buffer at once, a receiver may
// write over what it got without touching other messages, and once all are
// acknowledged no range of the pool is held.
func TestLentMessages(t *testing.T) {
	for _, d := range []Delivery{AtLeastOnce, AtMostOnce, ExactlyOnce} {
		t.Run(d.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			opts := Options{NoInProcess: true}
			r, s := linked(t, ctx, "lent", opts, opts, ChannelOptions{Capacity: 8, Delivery: d})
			sizes := []int{bigMessage, 1 << 20, 10, bigMessage - 1, 300 << 10, 0, 3 << 20, 64, 70 << 10, 64 << 10}
			wantLent := 0
			for _, n := range sizes {
				if n >= bigMessage {
					wantLent++
				}
			}
			errc := make(chan error, 1)
			go func() {
				buf := make([]byte, 3<<20)
				for i, n := range sizes {
					fill(buf[:n], i)
					if err := s.Send(ctx, buf[:n]); err != nil {
						errc <- err
						return
					}
					fill(buf, 255) // the caller reuses its buffer at once
				}
				errc <- s.Flush(ctx)
			}()
			want := make([]byte, 3<<20)
			var got []Message
			for i, n := range sizes {
				m, err := r.Recv(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if m.Loaned() {
					t.Fatalf("message %d came as a loan: a plain Send must give the receiver its own bytes", i)
				}
				fill(want[:n], i)
				if !bytes.Equal(m.Data, want[:n]) {
					t.Fatalf("message %d (%d bytes): got %d bytes, content differs", i, n, len(m.Data))
				}
				got = append(got, m)
				for j := range m.Data {
					m.Data[j] = 0xee // the receiver's to scribble on
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			for i, m := range got {
				if len(m.Data) != sizes[i] || len(m.Data) > 0 && (m.Data[0] != 0xee || m.Data[len(m.Data)-1] != 0xee) {
					t.Fatalf("message %d changed after it was taken", i)
				}
			}
			if st := s.Stats(); st.Lent != uint64(wantLent) {
				t.Fatalf("%d messages went through the loan pool, want %d", st.Lent, wantLent)
			}
			if n := liveRanges(s); n != 0 {
				t.Fatalf("%d ranges of the loan pool still held after every message was acknowledged", n)
			}
		})
	}
}

// TestLentPoolFull: when the loan pool has no room, large messages are
// framed as usual, in order with the lent ones; ranges come back once their
// messages are acknowledged, not before.
func TestLentPoolFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := Options{NoInProcess: true, LoanPoolSize: 4 * loanBlock}
	r, s := linked(t, ctx, "full", opts, opts, ChannelOptions{Capacity: 16})
	const n, size = 10, 60 << 10
	buf := make([]byte, size)
	for i := range n {
		fill(buf, i)
		if err := s.Send(ctx, buf); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing was taken, so nothing acknowledged: the four ranges are held.
	if st := s.Stats(); st.Lent != 4 {
		t.Fatalf("%d of %d messages lent with room for 4 in the pool", st.Lent, n)
	}
	if got := liveRanges(s); got != 4 {
		t.Fatalf("%d ranges held before any message was taken, want 4", got)
	}
	expectFilled(t, ctx, r, 0, n, size)
	expectPoolFree(t, ctx, s)
	// With room again, the next large message is lent.
	if err := s.Send(ctx, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Lent != 5 {
		t.Fatalf("%d messages lent, want 5", st.Lent)
	}
}

// TestLentReceiverKilled: a receiver process that copied lent messages out
// (and released their ranges) but never took them is killed with SIGKILL;
// under AtLeastOnce the sender sends their bytes again, intact, to the next
// receiver. More messages are sent than the pool has ranges: a range the
// sender reused before the message in it was acknowledged would show as
// damaged bytes here.
func TestLentReceiverKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, hold, s := toHolder(t, ctx, "lent", 32)
	const n, size = 24, 40 << 10 // the pool has 16 ranges of 64 KiB
	buf := make([]byte, size)
	for i := range n {
		if i == 16 {
			// The receiver copies lent messages out as they arrive and
			// releases their ranges: wait for that, so that the sends
			// below would find the ranges free if a RELEASE alone freed them.
			for awaitingRelease(s) > 0 {
				if ctx.Err() != nil {
					t.Fatal("the receiver never released the lent ranges")
				}
				time.Sleep(time.Millisecond)
			}
		}
		fill(buf, i)
		if err := s.Send(ctx, buf); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Lent != 16 {
		t.Fatalf("%d of %d messages lent, want 16 (one per range of the pool)", st.Lent, n)
	}
	hold.Kill()
	rn := openNode(t, dir, Options{})
	r, err := rn.Receive(ctx, "lent", ChannelOptions{Capacity: 32})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	for i := range n {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("after the receiver died, %d of %d lent messages came again: %v", i, n, err)
		}
		fill(want, i)
		if !bytes.Equal(m.Data, want) {
			t.Fatalf("message %d sent again out of order or damaged (%d bytes)", i, len(m.Data))
		}
	}
	if st := s.Stats(); st.Redelivered != n {
		t.Fatalf("%d messages redelivered, want %d", st.Redelivered, n)
	}
}

// TestLentSynchronousAndDropOldest: lent messages on a synchronous channel
// (Send returns once a receiver took the message) and on a DropOldest one
// (the oldest are dropped unread) arrive intact or are counted dropped,
// and leave no range of the pool held.
func TestLentSynchronousAndDropOldest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := Options{NoInProcess: true}
	const size = 48 << 10
	t.Run("capacity 0", func(t *testing.T) {
		r, s := linked(t, ctx, "sync", opts, opts, ChannelOptions{Capacity: 0})
		errc := make(chan error, 1)
		go func() {
			buf := make([]byte, size)
			for i := range 20 {
				fill(buf, i)
				if err := s.Send(ctx, buf); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		expectFilled(t, ctx, r, 0, 20, size)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Lent != 20 {
			t.Fatalf("%d of 20 lent", st.Lent)
		}
		expectPoolFree(t, ctx, s)
	})
	t.Run("DropOldest", func(t *testing.T) {
		r, s := linked(t, ctx, "drop", opts, opts, ChannelOptions{Capacity: 4, OnFull: DropOldest})
		buf := make([]byte, size)
		for i := range 12 {
			fill(buf, i)
			if err := s.Send(ctx, buf); err != nil {
				t.Fatal(err)
			}
		}
		// (Flush would wait for the queued ones to be taken.)
		for r.Stats().Received < 12 {
			if ctx.Err() != nil {
				t.Fatalf("the receiver got %d of 12", r.Stats().Received)
			}
			time.Sleep(time.Millisecond)
		}
		if ls := s.Stats().Lent; ls != 12 {
			t.Fatalf("%d of 12 lent", ls)
		}
		st := r.Stats()
		if st.Received != 12 || st.Dropped+uint64(st.Queued) != 12 || st.Queued != 4 {
			t.Fatalf("receiver stats %+v: want 12 received, 4 queued, 8 dropped", st)
		}
		expectFilled(t, ctx, r, 8, 12, size)
		expectPoolFree(t, ctx, s)
	})
}
