package rmi

import (
	"context"
	"testing"
	"time"
)

// A background reader serves a call while keeping the read token (see
// reader.go). These tests check the ways the token goes on when the call
// could wait for something only a reader would see.

// Gate is a remote interface whose Wait blocks, without looking at its
// context, until another call opens the gate.
type Gate interface {
	Wait(ctx context.Context) error
	Open(ctx context.Context) error
	// Inline reports whether a call is being served while its reader
	// keeps the token, after asking for its context's Done channel when
	// askDone is set.
	Inline(ctx context.Context, askDone bool) (bool, error)
}

type gateProxy struct{ *Delegate }

func (p gateProxy) Wait(ctx context.Context) error { return Call0(ctx, p.Delegate, "Wait") }
func (p gateProxy) Open(ctx context.Context) error { return Call0(ctx, p.Delegate, "Open") }
func (p gateProxy) Inline(ctx context.Context, askDone bool) (bool, error) {
	return Call1[bool](ctx, p.Delegate, "Inline", askDone)
}

func init() { Register(func(d *Delegate) Gate { return gateProxy{d} }) }

type gate struct {
	ep      *Endpoint
	ch      chan struct{}
	started chan struct{} // gets a value when Wait starts
}

func (g *gate) Wait(ctx context.Context) error {
	g.started <- struct{}{}
	<-g.ch
	return nil
}
func (g *gate) Open(ctx context.Context) error { close(g.ch); return nil }
func (g *gate) Inline(ctx context.Context, askDone bool) (bool, error) {
	if askDone {
		ctx.Done()
	}
	r := &g.ep.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inline != 0, nil
}

func gatePair(t *testing.T) (context.Context, Gate, *gate) {
	t.Helper()
	ctx := testCtx(t)
	a, b := pair(t)
	obj := &gate{ep: b, ch: make(chan struct{}), started: make(chan struct{}, 1)}
	if err := Publish[Gate](b, "gate", obj); err != nil {
		t.Fatal(err)
	}
	g, err := Lookup[Gate](ctx, a, b.node.ID(), "gate")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, g, obj
}

// TestInlineCallWaitingForAnother: a call that blocks until a later call
// comes, on a channel and not on its context, does not stop that call
// from being read (the token goes on after inlineFor).
func TestInlineCallWaitingForAnother(t *testing.T) {
	ctx, g, obj := gatePair(t)
	waited := make(chan error, 1)
	go func() { waited <- g.Wait(ctx) }()
	select {
	case <-obj.started:
	case <-ctx.Done():
		t.Fatal("Wait was not served")
	}
	t0 := time.Now()
	if err := g.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	t.Logf("the second call was served %v after it was sent", time.Since(t0))
}

// TestInlineEndsWhenDoneIsAsked: a served call that asks for its
// context's Done channel no longer keeps the token; one that does not,
// does (a call from a caller that is not reading itself is served by a
// background reader).
func TestInlineEndsWhenDoneIsAsked(t *testing.T) {
	ctx, g, _ := gatePair(t)
	// Warm up: the first calls may come before the reader settles.
	for range 3 {
		if _, err := g.Inline(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	sawInline := false
	for range 20 {
		in, err := g.Inline(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		sawInline = sawInline || in
		in, err = g.Inline(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		if in {
			t.Fatal("a call that asked for Done still kept the read token")
		}
	}
	if !sawInline {
		t.Fatal("no call was served inline")
	}
}
