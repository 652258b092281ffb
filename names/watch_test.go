package names

import (
	"context"
	"errors"
	"os"
	"runtime"
	"sort"
	"testing"
	"time"
)

// waitDeadArmed starts WaitDead(id) in a goroutine and returns once it is
// waiting (found the node alive), with the mode it waits in and a channel
// that receives its result.
func waitDeadArmed(t *testing.T, ctx context.Context, reg *Registry, id string) (mode string, done <-chan error) {
	t.Helper()
	armed := make(chan string, 1)
	testHookWaitDeadArmed = func(m string) { armed <- m }
	res := make(chan error, 1)
	go func() { res <- reg.WaitDead(ctx, id) }()
	select {
	case mode = <-armed:
	case err := <-res:
		t.Fatalf("WaitDead(%s) returned %v before the node died", id, err)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDead never started waiting")
	}
	return mode, res
}

func TestWaitDeadAfterSIGKILL(t *testing.T) {
	t.Cleanup(func() { testHookWaitDeadArmed = nil })
	reg := openReg(t)
	before := settleRetries.Load()
	var lat, reap []time.Duration
	for i := range 10 {
		c := startChild(t, reg.Dir(), "victim", "jobs")
		mode, done := waitDeadArmed(t, context.Background(), reg, "victim")
		if mode != "inotify" {
			t.Errorf("WaitDead waits by %q, want inotify", mode)
		}
		t0 := time.Now()
		if err := c.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		reaped := make(chan time.Duration, 1)
		go func() {
			_ = c.cmd.Wait()
			reaped <- time.Since(t0)
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("WaitDead: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("WaitDead did not return within 10s of SIGKILL")
		}
		d := time.Since(t0)
		lat = append(lat, d)
		reap = append(reap, <-reaped)
		if _, err := reg.Node("victim"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: WaitDead returned but Node(victim) = %v", i, err)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(reap, func(i, j int) bool { return reap[i] < reap[j] })
	t.Logf("from kill(2) to WaitDead returning, over %d kills: min %v, median %v, max %v", len(lat), lat[0], lat[len(lat)/2], lat[len(lat)-1])
	t.Logf("from kill(2) to cmd.Wait returning (process reaped), same kills: min %v, median %v, max %v", reap[0], reap[len(reap)/2], reap[len(reap)-1])
	t.Logf("close events after which the lock was still held for a moment: %d", settleRetries.Load()-before)
}

func TestWaitDeadSameProcess(t *testing.T) {
	t.Cleanup(func() { testHookWaitDeadArmed = nil })
	reg := openReg(t)
	if err := reg.WaitDead(context.Background(), "nobody"); err != nil {
		t.Fatalf("WaitDead(unregistered) = %v, want nil", err)
	}
	if err := reg.WaitDead(context.Background(), "bad/id"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("WaitDead(bad/id) = %v, want ErrInvalidName", err)
	}
	lease, err := reg.Register(NodeInfo{ID: "me"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := reg.WaitDead(ctx, "me"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitDead(live) = %v, want DeadlineExceeded", err)
	}

	// Cancellation while waiting.
	ctx2, cancel2 := context.WithCancel(context.Background())
	_, done := waitDeadArmed(t, ctx2, reg, "me")
	cancel2()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitDead after cancel = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDead ignored cancellation")
	}

	_, done = waitDeadArmed(t, context.Background(), reg, "me")
	if err := lease.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitDead after Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDead did not return after Lease.Close")
	}
}

// expectNotify fails unless ch delivers within the deadline.
func expectNotify(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: Changes channel closed", what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no notification within 10s", what)
	}
}

// quiet fails if ch already holds a notification.
func quiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: notification before anything changed", what)
	default:
	}
}

// watchStep opens a fresh watch, so that a notification can only come from
// what the step does next.
func watchStep(t *testing.T, reg *Registry) (<-chan struct{}, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := reg.Changes(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return ch, func() {
		cancel()
		// The goroutine closes the channel when it ends.
		deadline := time.After(10 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-deadline:
				t.Fatal("Changes goroutine did not end after cancel")
			}
		}
	}
}

func TestChanges(t *testing.T) {
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()

	steps := []struct {
		what string
		do   func() error
	}{
		{"bind new name", func() error { return lease.Bind("jobs", nil) }},
		{"bind again", func() error { return lease.Bind("jobs", map[string]string{"kind": "channel"}) }},
		{"bind second name", func() error { return lease.Bind("topic/x", nil) }},
		{"unbind", func() error { return lease.Unbind("jobs") }},
		{"register", func() error {
			l2, err := reg.Register(NodeInfo{ID: "n2"})
			if err == nil {
				t.Cleanup(func() { l2.Close() })
			}
			return err
		}},
	}
	for _, s := range steps {
		ch, stop := watchStep(t, reg)
		quiet(t, ch, s.what)
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		expectNotify(t, ch, s.what)
		stop()
	}

	// A name directory created after the watch started is watched too.
	ch, stop := watchStep(t, reg)
	if err := lease.Bind("later", nil); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, ch, "bind later")
	l3, err := reg.Register(NodeInfo{ID: "n3"})
	if err != nil {
		t.Fatal(err)
	}
	expectNotify(t, ch, "register n3")
	// Drain whatever is pending, then bind in the new directory.
	for len(ch) > 0 {
		<-ch
	}
	if err := l3.Bind("later", nil); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, ch, "second holder in a directory created after the watch")
	if err := l3.Close(); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, ch, "close n3")
	stop()
}

// TestChangesOnSIGKILL: a holder's death is noticed without any reader
// touching the files, and Lookup right after the notification no longer
// returns the dead holder.
func TestChangesOnSIGKILL(t *testing.T) {
	reg := openReg(t)
	c := startChild(t, reg.Dir(), "w1", "jobs")
	ch, stop := watchStep(t, reg)
	defer stop()
	quiet(t, ch, "before kill")
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, ch, "SIGKILL of a holder")
	hs, err := reg.Lookup("jobs")
	if err != nil || len(hs) != 0 {
		t.Fatalf("Lookup(jobs) right after the notification = %+v, %v", hs, err)
	}
	_ = c.cmd.Wait()
	// The collection done by Lookup is a change too.
	expectNotify(t, ch, "collection")
}

func TestChangesCanceledContext(t *testing.T) {
	reg := openReg(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := reg.Changes(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Changes(canceled) = %v", err)
	}
}

// TestWaitDeadPollFallback exercises the probing used when inotify or
// /proc is unavailable.
func TestWaitDeadPollFallback(t *testing.T) {
	reg := openReg(t)
	c := startChild(t, reg.Dir(), "victim")
	f, err := openNoFollow(reg.nodePath("victim"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := reg.pollDead(ctx, f); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pollDead(live) = %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- reg.pollDead(context.Background(), f) }()
	t0 := time.Now()
	c.kill(t)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("polling WaitDead returned %v after kill(2)", time.Since(t0))
	case <-time.After(10 * time.Second):
		t.Fatal("pollDead did not return after SIGKILL")
	}
}

// TestWaitDeadStrayWriter: IN_CLOSE_WRITE from a writer other than the
// owner (what WaitDead also sees in the instant between the kernel's close
// event and its lock release) makes WaitDead probe again, not return.
func TestWaitDeadStrayWriter(t *testing.T) {
	t.Cleanup(func() { testHookWaitDeadArmed = nil })
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "me"})
	if err != nil {
		t.Fatal(err)
	}
	_, done := waitDeadArmed(t, context.Background(), reg, "me")
	before := settleRetries.Load()
	w, err := os.OpenFile(reg.nodePath("me"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	deadline := time.Now().Add(10 * time.Second)
	for settleRetries.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("WaitDead did not react to IN_CLOSE_WRITE")
		}
		runtime.Gosched()
	}
	select {
	case err := <-done:
		t.Fatalf("WaitDead returned %v while the owner lives", err)
	default:
	}
	if err := lease.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDead did not return after Close")
	}
}
