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

	far, endFar := ep.callContext(time.Hour)
	defer endFar()
	none, endNone := ep.callContext(0)
	if _, ok := none.Deadline(); ok {
		t.Fatal("a call without TO has a deadline")
	}
	gone, endGone := ep.callContext(time.Millisecond) // removed before it expires: the timer skips it
	endGone()
	if !errors.Is(gone.Err(), context.Canceled) {
		t.Fatalf("ended call: %v", gone.Err())
	}
	near, endNear := ep.callContext(30 * time.Millisecond) // earlier than far: re-arms
	defer endNear()
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
	endNone()
	ep.dls.mu.Lock()
	n := len(ep.dls.h)
	ep.dls.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d deadlines kept, want 1 (far)", n)
	}
}
