package rmi

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCallContextDeadlines(t *testing.T) {
	ep := &Endpoint{}
	ep.ctx, ep.cancel = context.WithCancel(context.Background())
	defer ep.cancel()
	defer ep.stopDeadlines()

	far := ep.callContext(time.Hour)
	defer far.end()
	none := ep.callContext(0)
	if _, ok := none.Deadline(); ok {
		t.Fatal("a call without TO has a deadline")
	}
	gone := ep.callContext(time.Millisecond) // removed before it expires: the timer skips it
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

// TestCallContextDerived: contexts derived from a served call's context,
// and context.AfterFunc on it, end when the call ends; a stopped AfterFunc
// does not run; Done made after the end is closed.
func TestCallContextDerived(t *testing.T) {
	ep := &Endpoint{}
	ep.ctx, ep.cancel = context.WithCancel(context.Background())
	defer ep.cancel()
	defer ep.stopDeadlines()

	cc := ep.callContext(time.Hour)
	child, cancelChild := context.WithCancel(cc)
	defer cancelChild()
	ran := make(chan struct{})
	context.AfterFunc(cc, func() { close(ran) })
	stopped := false
	stop := context.AfterFunc(cc, func() { stopped = true })
	if !stop() {
		t.Fatal("stop of a pending AfterFunc reported false")
	}
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
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc did not run")
	}
	select {
	case <-cc.Done():
	default:
		t.Fatal("Done asked after the end is not closed")
	}
	if stopped {
		t.Fatal("a stopped AfterFunc ran")
	}
	late := make(chan struct{})
	context.AfterFunc(cc, func() { close(late) })
	select {
	case <-late:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc on an ended context did not run")
	}
}
