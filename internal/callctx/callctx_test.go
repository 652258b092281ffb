package callctx

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ctx is a whole context.Context around a Core, as rpc and rmi make one.
type ctx struct{ Core }

func (*ctx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (*ctx) Value(any) any               { return nil }

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal(what)
	}
}

func TestCancel(t *testing.T) {
	c := &ctx{}
	if c.Err() != nil {
		t.Fatal("a new context is cancelled")
	}
	done := c.Done()
	child, cancelChild := context.WithCancel(c)
	defer cancelChild()
	ran := make(chan struct{})
	context.AfterFunc(c, func() { close(ran) })
	stop := context.AfterFunc(c, func() { t.Error("a stopped AfterFunc ran") })
	if !stop() || stop() {
		t.Fatal("stop: want true once, then false")
	}
	locked := 0
	if !c.Cancel(context.DeadlineExceeded, func() { locked++ }) {
		t.Fatal("the first Cancel reported the context dead")
	}
	if c.Cancel(context.Canceled, func() { locked++ }) {
		t.Fatal("a second Cancel reported the context live")
	}
	if locked != 1 {
		t.Fatalf("locked ran %d times, want once (the Cancel that won)", locked)
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want the first Cancel's error", c.Err())
	}
	wait(t, done, "Done asked before the cancel was not closed")
	wait(t, c.Done(), "Done asked after the cancel is not closed")
	wait(t, child.Done(), "a derived context did not end")
	wait(t, ran, "AfterFunc did not run")
	late := make(chan struct{})
	if context.AfterFunc(c, func() { close(late) })() {
		t.Fatal("stop of an AfterFunc on a cancelled context reported true")
	}
	wait(t, late, "AfterFunc on a cancelled context did not run")
}
