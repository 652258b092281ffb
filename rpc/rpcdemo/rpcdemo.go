// Package rpcdemo is the RPC part of `loft demo`: a small service that a
// child process serves, and the calls the parent makes to it. The demo
// (internal/demo) starts the child and reports the summary.
package rpcdemo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

// Service is the name the demo service is registered under.
const Service = "demo.calc"

// AddReq and AddResp are the arguments and result of Add.
type (
	AddReq struct {
		A, B int
	}
	AddResp struct {
		Sum int
	}
)

// Serve serves the demo service on node until ctx ends. ready is called
// once clients can find it. Its methods: Add; Wait, which returns after
// the given number of milliseconds or when cancelled (and says which);
// and Panic, which panics.
func Serve(ctx context.Context, node *loft.Node, ready func()) error {
	// The panic is on purpose: keep its stack trace out of the demo.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := rpc.NewServer(node, Service, rpc.ServerOptions{Logger: quiet})
	if err != nil {
		return err
	}
	err = errors.Join(
		rpc.Register(s, "Add", func(_ context.Context, r AddReq) (AddResp, error) {
			return AddResp{Sum: r.A + r.B}, nil
		}),
		rpc.Register(s, "Wait", func(ctx context.Context, ms int) (string, error) {
			t := time.NewTimer(time.Duration(ms) * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return "done", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}),
		rpc.Register(s, "Panic", func(context.Context, string) (string, error) {
			panic("the demo handler panics on purpose")
		}),
	)
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return s.Close()
}

// Exercise calls the demo service from node and returns a one-line
// summary: 2,000 typed calls with 64 in flight (checked), the latency of
// one call at a time, a cancelled call, a deadline, and a panic that the
// server survives.
func Exercise(ctx context.Context, node *loft.Node) (string, error) {
	c, err := rpc.Dial(ctx, node, Service, rpc.ClientOptions{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{}); err != nil {
		return "", fmt.Errorf("first call: %w", err)
	}
	// One at a time.
	const serial = 200
	start := time.Now()
	for i := range serial {
		r, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: 1})
		if err != nil || r.Sum != i+1 {
			return "", fmt.Errorf("Add(%d, 1) = %d, %v", i, r.Sum, err)
		}
	}
	perCall := time.Since(start) / serial
	// 64 in flight.
	const total, inflight = 2000, 64
	start = time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, inflight)
	for w := range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += inflight {
				r, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: i})
				if err == nil && r.Sum != 2*i {
					err = fmt.Errorf("Add(%d, %d) = %d", i, i, r.Sum)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return "", err
	}
	rate := float64(total) / time.Since(start).Seconds()
	// Cancellation reaches the handler.
	cctx, cancel := context.WithCancel(ctx)
	f := rpc.Go[int, string](cctx, c, "Wait", 60_000)
	cancel()
	if _, err := f.Wait(ctx); !errors.Is(err, context.Canceled) {
		return "", fmt.Errorf("cancelled call: %v", err)
	}
	// A deadline travels with the call.
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = rpc.Call[int, string](dctx, c, "Wait", 60_000)
	dcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		return "", fmt.Errorf("call past its deadline: %v", err)
	}
	// A panic is an error; the server lives on.
	if _, err := rpc.Call[string, string](ctx, c, "Panic", ""); !errors.Is(err, rpc.Internal) {
		return "", fmt.Errorf("panicking call: %v", err)
	}
	if r, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: 2, B: 2}); err != nil || r.Sum != 4 {
		return "", fmt.Errorf("call after the panic: %d, %v", r.Sum, err)
	}
	return fmt.Sprintf("%d typed calls to another process, %.0f calls/s with %d in flight, %v per call one at a time; cancel, deadline and a handler panic all came back as errors",
		serial+total, rate, inflight, perCall.Round(time.Microsecond)), nil
}
