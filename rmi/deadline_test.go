package rmi

import (
	"context"
	"errors"
	"testing"
	"time"
)

// bareEndpoint is an Endpoint with only what callContext needs.
func bareEndpoint(t *testing.T) *Endpoint {
	ep := &Endpoint{}
	ep.ctx, ep.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		ep.stopDeadlines()
		ep.cancel()
	})
	return ep
}

func TestCallContextDeadlines(t *testing.T) {
	ep := bareEndpoint(t)

	far := ep.callContext(time.Hour)
	defer far.end()
	far.Done() // (a deadline is watched once Done is asked for)
	none := ep.callContext(0)
	if _, ok := none.Deadline(); ok {
		t.Fatal("a call without TO has a deadline")
	}
	gone := ep.callContext(time.Millisecond) // removed before it expires: the timer skips it
	gone.Done()
	gone.end()
	if !errors.Is(gone.Err(), context.Canceled) {
		t.Fatalf("ended call: %v", gone.Err())
	}
	near := ep.callContext(30 * time.Millisecond) // earlier than far: re-arms
	defer near.end()
	dl, ok := near.Deadline()
	if !ok || time.Until(dl) > 30*time.Millisecond {
		t.Fatalf("deadline %v %v", dl, ok)
	}
	select {
	case <-near.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the deadline did not cancel the call")
	}
	if !errors.Is(near.Err(), context.DeadlineExceeded) {
		t.Fatalf("near: %v", near.Err())
	}
	if far.Err() != nil || none.Err() != nil {
		t.Fatalf("others ended: %v %v", far.Err(), none.Err())
	}
	none.end()
	ep.dls.mu.Lock()
	n := len(ep.dls.h)
	ep.dls.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d deadlines kept, want 1 (far)", n)
	}
}

// TestCallContextDerived: a context derived from a served call's context
// ends when the call does (the core itself is tested in internal/callctx).
func TestCallContextDerived(t *testing.T) {
	cc := bareEndpoint(t).callContext(time.Hour)
	child, cancelChild := context.WithCancel(cc)
	defer cancelChild()
	if child.Err() != nil {
		t.Fatalf("child ended early: %v", child.Err())
	}
	cc.end()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the derived context did not end with the call")
	}
	if !errors.Is(child.Err(), context.Canceled) || !errors.Is(cc.Err(), context.Canceled) {
		t.Fatalf("errors: child %v, call %v", child.Err(), cc.Err())
	}
}

// TestCallContextLazyDeadline: a served call's deadline goes into the
// endpoint's heap only when something may wait for it (Done, AfterFunc, a
// derived context); Err sees a passed deadline without it.
func TestCallContextLazyDeadline(t *testing.T) {
	ep := bareEndpoint(t)
	heapLen := func() int {
		ep.dls.mu.Lock()
		defer ep.dls.mu.Unlock()
		return len(ep.dls.h)
	}

	quick := ep.callContext(time.Hour)
	if _, ok := quick.Deadline(); !ok || quick.Err() != nil || heapLen() != 0 {
		t.Fatalf("a call nothing waits on: deadline set %v, err %v, %d in the heap, want 0", ok, quick.Err(), heapLen())
	}
	quick.end()
	quick.Done() // after the end: not watched any more
	if heapLen() != 0 {
		t.Fatalf("%d in the heap after a Done that followed the end", heapLen())
	}

	passed := ep.callContext(time.Hour)
	passed.dl.at = time.Now().Add(-time.Second) // (as if an hour went by)
	if !errors.Is(passed.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err past the deadline: %v", passed.Err())
	}
	select {
	case <-passed.Done():
	default:
		t.Fatal("Done not closed once Err saw the deadline")
	}
	passed.end()

	soon := ep.callContext(20 * time.Millisecond)
	defer soon.end()
	ran := make(chan struct{})
	context.AfterFunc(soon, func() { close(ran) })
	child, cancelChild := context.WithCancel(soon)
	defer cancelChild()
	if heapLen() != 1 {
		t.Fatalf("%d in the heap after AfterFunc, want 1", heapLen())
	}
	for _, ch := range []<-chan struct{}{ran, child.Done()} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("the deadline did not end the call's AfterFunc or derived context")
		}
	}
	if !errors.Is(soon.Err(), context.DeadlineExceeded) || heapLen() != 0 {
		t.Fatalf("after the deadline: %v, %d in the heap", soon.Err(), heapLen())
	}
}
