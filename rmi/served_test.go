package rmi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Holder keeps the context of each call it serves (the tests below look at
// them after the calls returned).
type Holder interface {
	Hold(ctx context.Context, tag string) (string, error)
}

type holderProxy struct{ *Delegate }

func (p holderProxy) Hold(ctx context.Context, tag string) (string, error) {
	return Call1[string](ctx, p.Delegate, "Hold", tag)
}

func init() {
	Register(func(d *Delegate) Holder { return holderProxy{d} }, Stubs[Holder]{
		"Hold": func(ctx context.Context, obj Holder, c *Served) error {
			a1, err := Arg[string](c)
			if err != nil {
				return err
			}
			r0, err := obj.Hold(ctx, a1)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
	})
}

type ctxHolder struct {
	mu   sync.Mutex
	ctxs []context.Context
}

func (h *ctxHolder) Hold(ctx context.Context, tag string) (string, error) {
	h.mu.Lock()
	h.ctxs = append(h.ctxs, ctx)
	h.mu.Unlock()
	// A result longer than the served call's first buffer, and one per
	// call: a reply built from a recycled call's buffers would show.
	return strings.Repeat(tag, 10), nil
}

// TestServedCallsRecycled makes calls from several goroutines at once to a
// method that keeps its context. The state of a served call is recycled
// once its reply is encoded: every reply must still be its own call's, and
// every context kept must read as ended after its call, however many calls
// came after it.
func TestServedCallsRecycled(t *testing.T) {
	ctx := testCtx(t)
	a, b := pair(t)
	h := &ctxHolder{}
	if err := Publish[Holder](b, "holder", h); err != nil {
		t.Fatal(err)
	}
	hd, err := Lookup[Holder](ctx, a, b.node.ID(), "holder")
	if err != nil {
		t.Fatal(err)
	}
	const workers, calls = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				tag := fmt.Sprintf("<%d.%d>", w, i)
				got, err := hd.Hold(ctx, tag)
				if err == nil && got != strings.Repeat(tag, 10) {
					err = fmt.Errorf("call %s got the reply %q", tag, got)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ctxs) != workers*calls {
		t.Fatalf("%d calls served, want %d", len(h.ctxs), workers*calls)
	}
	for i, c := range h.ctxs {
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("context of call %d after its end: Err %v, want Canceled", i, c.Err())
		}
		select {
		case <-c.Done():
		default:
			t.Fatalf("context of call %d after its end: Done not closed", i)
		}
		if _, ok := c.Deadline(); !ok {
			t.Fatalf("context of call %d lost its deadline (the caller's context has one)", i)
		}
	}
}

// TestChainsReuseAnswers runs pipelined chains one after another, each
// from a name of its own: the answers a chain keeps are reused once its
// caller ends them, and every chain must still read its own file.
func TestChainsReuseAnswers(t *testing.T) {
	ctx := testCtx(t)
	_, b, s := pairSvc(t, ctx)
	defer Release(s)
	for i := range 300 {
		name := fmt.Sprintf("f%d", i)
		pctx := Pipeline(ctx)
		f, err := s.Open(pctx, name)
		if err != nil {
			t.Fatal(err)
		}
		fs := []File{f}
		for range i % 6 {
			if f, err = f.Next(pctx); err != nil {
				t.Fatal(err)
			}
			fs = append(fs, f)
		}
		got, err := f.Read(ctx)
		if want := "contents of " + name + strings.Repeat("+", i%6); err != nil || got != want {
			t.Fatalf("chain %d read %q, %v; want %q", i, got, err, want)
		}
		for _, f := range fs {
			Release(f)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.peers {
		if len(p.spareAns) == 0 {
			t.Fatalf("no answer kept for reuse after 300 chains")
		}
	}
}
