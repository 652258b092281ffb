package rmi

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"
)

// pair opens two endpoints in this process (loft's in-process transport).
func pair(t *testing.T) (a, b *Endpoint) {
	e := newEnv(t, false)
	_, ep2 := e.another(t)
	if err := Publish[Svc](ep2, "svc", &svc{ep: ep2, nest: &nester{}}); err != nil {
		t.Fatal(err)
	}
	return e.ep, ep2
}

// pairSvc is pair with the client's delegate of the server's "svc".
func pairSvc(t *testing.T, ctx context.Context) (a, b *Endpoint, s Svc) {
	t.Helper()
	a, b = pair(t)
	s, err := Lookup[Svc](ctx, a, b.node.ID(), "svc")
	if err != nil {
		t.Fatal(err)
	}
	return a, b, s
}

// TestFinalizerLeak: a delegate dropped without Release is released by
// the garbage collector, counted as a leak, and the home's export goes.
func TestFinalizerLeak(t *testing.T) {
	ctx := testCtx(t)
	a, b, s := pairSvc(t, ctx)
	func() {
		c, err := s.Make(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Add(ctx, 1)
	}()
	expectLeakCollected(t, ctx, a, b, s)
	if st := a.Stats(); st.Leaked != 1 || st.Delegates != 1 {
		t.Fatalf("stats: %+v", st)
	}
}

// TestBorrowEnds: an argument delegate not retained is dead after the call.
func TestBorrowEnds(t *testing.T) {
	ctx := testCtx(t)
	a, b, s := pairSvc(t, ctx)
	var kept Listener
	l := &progressKeep{keep: &kept}
	if _, err := s.Job(ctx, 1, l); err != nil {
		t.Fatal(err)
	}
	_ = kept
	if n := a.ExportsTo(b.node.ID()); n != 0 {
		t.Fatalf("a borrowed argument is still exported: %d", n)
	}
	// Calling through a borrowed delegate after its call: ErrReleased.
	p, _ := b.peer(a.node.ID())
	d := newDelegate(b, p, lookupIface(typeOf[Counter]()), objID{1}, true)
	d.endBorrow()
	if _, err := (counterProxy{d}).Add(ctx, 1); !errors.Is(err, ErrReleased) {
		t.Fatalf("after the loan: %v", err)
	}
	if err := d.Retain(); !errors.Is(err, ErrReleased) {
		t.Fatalf("Retain after the call: %v", err)
	}
}

type progressKeep struct{ keep *Listener }

func (p *progressKeep) Progress(ctx context.Context, done, total int) error { return nil }

// TestCloseEndsServedCalls: closing an endpoint cancels the contexts of the
// calls it is serving (Close waits for them to return).
func TestCloseEndsServedCalls(t *testing.T) {
	ctx := testCtx(t)
	_, b, s := pairSvc(t, ctx)
	startBlocked(t, ctx, s)
	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not end the call it was serving")
	}
}

// startBlocked starts s.Block in the background and returns once the call
// is being served: the server has answered a later call (one connection,
// in order). The channel gets Block's error.
func startBlocked(t *testing.T, ctx context.Context, s Svc) <-chan error {
	t.Helper()
	blocked := make(chan error, 1)
	go func() { blocked <- s.Block(ctx) }()
	if _, err := s.Echo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return blocked
}

// TestFinalizerLeakPromise: a pipelined result dropped without Release is
// released by the garbage collector once resolved, and counted as a leak
// (a promise shares its allocation with its pending entry, which must not
// keep it alive).
func TestFinalizerLeakPromise(t *testing.T) {
	ctx := testCtx(t)
	a, b, s := pairSvc(t, ctx)
	func() {
		f, err := s.Open(Pipeline(ctx), "x")
		if err != nil {
			t.Fatal(err)
		}
		if err := DelegateOf(f).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	expectLeakCollected(t, ctx, a, b, s)
}

// expectLeakCollected checks that b exports two objects to a (s and one
// that a dropped without Release), then collects garbage until a counts
// the leak, and that b's export of the dropped one goes (the release
// rides on the next message to b).
func expectLeakCollected(t *testing.T, ctx context.Context, a, b *Endpoint, s Svc) {
	t.Helper()
	if n := b.ExportsTo(a.node.ID()); n != 2 {
		t.Fatalf("exports before GC: %d", n)
	}
	for a.Stats().Leaked == 0 {
		runtime.GC()
		if ctx.Err() != nil {
			t.Fatal("the finalizer never ran")
		}
	}
	if n, err := s.Exports(ctx); err != nil || n != 1 {
		t.Fatalf("exports after the leak was collected: %d %v", n, err)
	}
}

// TestPendTable: calls whose ids share a slot go to the map and are found
// there (idTable, also the table of kept answers); get leaves them, take
// removes each call once; all lists what is left.
func TestPendTable(t *testing.T) {
	var tb pendTable
	pds := map[uint64]*pending{}
	for _, id := range []uint64{1, 2, 1 + idSlots, 1 + 2*idSlots, 3, 2 + idSlots} {
		pds[id] = &pending{}
		tb.put(id, pds[id])
	}
	if tb.n != 6 || len(tb.more) != 3 {
		t.Fatalf("n %d, %d in the map; want 6, 3", tb.n, len(tb.more))
	}
	for id, pd := range pds {
		if tb.get(id) != pd {
			t.Fatalf("get(%d) is not the call put", id)
		}
	}
	if tb.get(4) != nil || tb.get(1+3*idSlots) != nil || tb.n != 6 {
		t.Fatal("get found a call never put, or removed one")
	}
	if tb.take(4) != nil || tb.take(1+3*idSlots) != nil {
		t.Fatal("take found a call never put")
	}
	for _, id := range []uint64{1, 1 + 2*idSlots, 2 + idSlots} {
		if tb.take(id) != pds[id] {
			t.Fatalf("take(%d) is not the call put", id)
		}
		if tb.take(id) != nil {
			t.Fatalf("take(%d) twice found it twice", id)
		}
	}
	tb.put(1+4*idSlots, &pending{}) // (slot 1 is free again)
	if tb.slots[1].id != 1+4*idSlots {
		t.Fatal("a freed slot was not reused")
	}
	left := tb.all()
	if tb.n != 4 || len(left) != 4 {
		t.Fatalf("n %d, all %d; want 4", tb.n, len(left))
	}
	for _, id := range []uint64{2, 3, 1 + idSlots} {
		if !slices.Contains(left, pds[id]) {
			t.Fatalf("all lacks call %d", id)
		}
	}
}

// TestCancelKeptCall: a pipelined call whose answer is kept (its context
// is found through the answer, not peer.running) is cancelled by a cancel
// from its caller, also after a (premature) end of its answer.
func TestCancelKeptCall(t *testing.T) {
	for _, finFirst := range []bool{false, true} {
		ctx := testCtx(t)
		a, b, s := pairSvc(t, ctx)
		pctx := Pipeline(ctx)
		f, _ := s.Open(pctx, "x")
		h, err := f.Stall(pctx) // (kept: Stall returns a File)
		if err != nil {
			t.Fatal(err)
		}
		hd := DelegateOf(h)
		go func() { _ = hd.Wait(ctx) }() // (sends the held calls)
		running := func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			for _, p := range b.peers {
				if an := p.answers.get(hd.callID); an != nil && an.run != nil {
					return true
				}
				if p.running[hd.callID] != nil {
					return true
				}
			}
			return false
		}
		for !running() {
			if ctx.Err() != nil {
				t.Fatal("Stall never ran")
			}
			time.Sleep(time.Millisecond)
		}
		if finFirst {
			a.queueCtl(hd.peer, nil, hd.callID, 0)
		}
		a.queueCtl(hd.peer, nil, 0, hd.callID)
		if err := hd.Wait(ctx); err == nil || ctx.Err() != nil {
			t.Fatalf("finFirst %v: Stall not cancelled: %v", finFirst, err)
		}
		Release(f)
		Release(h)
		Release(s)
	}
}

// TestLeaderDoneKept: the registration that interrupts a leading caller
// when its context ends is kept for the caller's next wait with a
// context that ends with it (reader.afDone); it still ends that wait, and
// its firing later, while another caller leads, only restarts that
// caller's Recv.
func TestLeaderDoneKept(t *testing.T) {
	ctx := testCtx(t)
	a, _, s := pairSvc(t, ctx)
	defer Release(s)
	c1, cancel1 := context.WithCancel(ctx)
	defer cancel1()
	if _, err := s.Echo(c1, 1); err != nil {
		t.Fatal(err)
	}
	a.rd.mu.Lock()
	kept := a.rd.afDone == c1.Done()
	a.rd.mu.Unlock()
	if !kept {
		t.Fatal("the registration on the caller's context was not kept")
	}
	done := make(chan error, 1)
	go func() { done <- s.Block(Pipeline(c1)) }() // (same Done: the kept registration)
	time.Sleep(20 * time.Millisecond)
	cancel1()
	expectBlockEnded(t, ctx, done, "a wait with the kept registration")

	c2, cancel2 := context.WithCancel(ctx)
	if _, err := s.Echo(c2, 2); err != nil {
		t.Fatal(err)
	}
	c3, cancel3 := context.WithCancel(ctx)
	defer cancel3()
	go func() { done <- s.Block(c3) }()
	time.Sleep(20 * time.Millisecond)
	cancel2() // (fires the registration kept for c2 while Block's caller leads)
	select {
	case err := <-done:
		t.Fatalf("Block returned when another caller's context ended: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if n, err := s.Echo(ctx, 3); err != nil || n != 3 {
		t.Fatalf("Echo during Block: %d, %v", n, err)
	}
	cancel3()
	expectBlockEnded(t, ctx, done, "Block")
}

// expectBlockEnded fails unless a Block call, whose result comes on done,
// returns an error (its context ended) before ctx, the test's, ends.
func expectBlockEnded(t *testing.T, ctx context.Context, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Block returned nil after its context ended")
		}
	case <-ctx.Done():
		t.Fatalf("%s did not end with its context", what)
	}
}
