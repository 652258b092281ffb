package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/loft-ipc/loft/rpc"
)

// A worker handles the call it received itself (see pool in server.go).
// These tests check that receiving goes on while a handler waits for
// something only a receiving worker would see.

// gateServer starts a server of "gate" whose Wait blocks, without looking
// at its context, until Open is called; started gets a value when Wait
// begins.
func gateServer(t *testing.T) (c *rpc.Client, started, ended <-chan struct{}) {
	t.Helper()
	n := openNode(t, runtimeDir(t), "shm")
	s, err := rpc.NewServer(n, "gate", rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	open := make(chan struct{})
	st := make(chan struct{}, 1)
	en := make(chan struct{}, 1)
	err = rpc.Register(s, "Wait", func(ctx context.Context, _ int) (int, error) {
		st <- struct{}{}
		<-open
		return 1, nil
	})
	if err == nil {
		err = rpc.Register(s, "Open", func(ctx context.Context, _ int) (int, error) {
			close(open)
			return 1, nil
		})
	}
	if err == nil {
		err = rpc.Register(s, "Block", func(ctx context.Context, _ int) (int, error) {
			st <- struct{}{}
			<-ctx.Done()
			en <- struct{}{}
			return 0, ctx.Err()
		})
	}
	if err == nil {
		err = rpc.Register(s, "Ping", func(ctx context.Context, n int) (int, error) { return n, nil })
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return dial(t, n, "shm", "gate", "", rpc.ClientOptions{}), st, en
}

// TestHandlerWaitingForAnotherCall: a handler that blocks until a later
// call comes, on a channel and not on its context, does not stop that
// call from being received.
func TestHandlerWaitingForAnotherCall(t *testing.T) {
	c, started, _ := gateServer(t)
	ctx := testCtx(t)
	waited := make(chan error, 1)
	go func() {
		_, err := rpc.Call[int, int](ctx, c, "Wait", 0)
		waited <- err
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("Wait was not served")
	}
	t0 := time.Now()
	if _, err := rpc.Call[int, int](ctx, c, "Open", 0); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	t.Logf("the second call was served %v after it was sent", time.Since(t0))
}

// TestHandlerWaitingForCancel: a handler that waits for its context ends
// when the caller gives up (the server receives the cancel), twice in a
// row, and the server answers another call after each.
func TestHandlerWaitingForCancel(t *testing.T) {
	c, started, ended := gateServer(t)
	ctx := testCtx(t)
	for i := range 2 {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := rpc.Call[int, int](cctx, c, "Block", 0)
			done <- err
		}()
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatalf("call %d: Block was not served", i)
		}
		cancel()
		if err := <-done; err == nil {
			t.Fatalf("call %d: Block returned no error after its cancel", i)
		}
		select {
		case <-ended:
		case <-ctx.Done():
			t.Fatalf("call %d: the handler never saw the cancel", i)
		}
		if n, err := rpc.Call[int, int](ctx, c, "Ping", 7); err != nil || n != 7 {
			t.Fatalf("call %d: Ping after it: %d, %v", i, n, err)
		}
	}
}
