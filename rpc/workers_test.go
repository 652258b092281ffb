package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/loft-ipc/loft/rpc"
)

// settledWorkers waits until s runs no handler and returns its workers.
func settledWorkers(t *testing.T, s *rpc.Server) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := s.Stats()
		if st.Running == 0 || time.Now().After(deadline) {
			return st.Workers
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOneWorkerForCallsOneAtATime: calls one after another leave one
// worker per channel of the server (its direct and its shared name). A
// second worker waiting to receive would be woken for every call (the one
// that receives hands reading on), a goroutine wake-up per call.
func TestOneWorkerForCallsOneAtATime(t *testing.T) {
	s, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	for i := range 300 {
		if _, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if w := settledWorkers(t, s); w != 2 {
		t.Fatalf("%d workers after calls one at a time, want 2 (one per channel)", w)
	}
}

// TestBlockedHandlerHoldsNothingUp: a handler that blocks without looking
// at its context runs on the worker that received it, and nobody else
// receives meanwhile; the watchdog starts another worker, so a call made
// while it blocks is answered (within inlineFor, 10 ms, give or take the
// machine) and not when the blocked one ends.
func TestBlockedHandlerHoldsNothingUp(t *testing.T) {
	n := openNode(t, runtimeDir(t), "shm")
	s, err := rpc.NewServer(n, "gate", rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	if err := rpc.Register(s, "Wait", func(ctx context.Context, _ int) (int, error) {
		<-release // (not ctx.Done: the worker cannot know it waits)
		return 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := rpc.Register(s, "Add", func(ctx context.Context, r AddReq) (int, error) { return r.A + r.B, nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := dial(t, n, "shm", "gate", "", rpc.ClientOptions{})
	ctx := testCtx(t)
	// Warm up: the client attached, Add known to be quick.
	if _, err := rpc.Call[AddReq, int](ctx, c, "Add", AddReq{A: 1, B: 1}); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := rpc.Call[int, int](ctx, c, "Wait", 0)
		waited <- err
	}()
	for s.Stats().Running == 0 {
		time.Sleep(100 * time.Microsecond)
	}
	const bound = 2 * time.Second // far above the watchdog's 10 ms; the Wait call is released after it at the latest
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	t0 := time.Now()
	sum, err := rpc.Call[AddReq, int](cctx, c, "Add", AddReq{A: 2, B: 3})
	took := time.Since(t0)
	close(release)
	if err != nil || sum != 5 {
		t.Fatalf("Add while Wait blocks: %v, %v after %v", sum, err, took)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	t.Logf("Add answered %v after it was sent, with Wait blocking", took)
}
