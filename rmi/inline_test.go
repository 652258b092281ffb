package rmi

import (
	"bytes"
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
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
	// Sleep sleeps for ms milliseconds.
	Sleep(ctx context.Context, ms int) error
	// Relay calls l.Progress once.
	Relay(ctx context.Context, l Listener) error
	// PipeWait opens a file of s in a pipelined call and waits for the
	// promise; it reports how many inline servings the 10 ms timer had
	// ended by then.
	PipeWait(ctx context.Context, s Svc) (int, error)
}

type gateProxy struct{ *Delegate }

func (p gateProxy) Wait(ctx context.Context) error { return Call0(ctx, p.Delegate, "Wait") }
func (p gateProxy) Open(ctx context.Context) error { return Call0(ctx, p.Delegate, "Open") }
func (p gateProxy) Inline(ctx context.Context, askDone bool) (bool, error) {
	return Call1[bool](ctx, p.Delegate, "Inline", askDone)
}

func (p gateProxy) Sleep(ctx context.Context, ms int) error {
	return Call0(ctx, p.Delegate, "Sleep", ms)
}
func (p gateProxy) Relay(ctx context.Context, l Listener) error {
	return Call0(ctx, p.Delegate, "Relay", l)
}

func (p gateProxy) PipeWait(ctx context.Context, s Svc) (int, error) {
	return Call1[int](ctx, p.Delegate, "PipeWait", s)
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

func (g *gate) Sleep(ctx context.Context, ms int) error {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return nil
}
func (g *gate) Relay(ctx context.Context, l Listener) error { return l.Progress(ctx, 1, 1) }
func (g *gate) PipeWait(ctx context.Context, s Svc) (int, error) {
	f, err := s.Open(Pipeline(ctx), "x")
	if err != nil {
		return 0, err
	}
	defer Release(f)
	if err := DelegateOf(f).Wait(ctx); err != nil {
		return 0, err
	}
	r := &g.ep.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wdEnded, nil
}

// slowListener takes a millisecond to hear of progress.
type slowListener struct{}

func (slowListener) Progress(ctx context.Context, done, total int) error {
	time.Sleep(time.Millisecond)
	return nil
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
// context's Done channel no longer keeps the token, and the next call of
// its method passes the token on before it runs; one that does not ask
// keeps it (a call from a caller that is not reading itself is served by a
// background reader).
func TestInlineEndsWhenDoneIsAsked(t *testing.T) {
	ctx, g, _ := gatePair(t)
	inline := func(askDone bool) bool {
		t.Helper()
		in, err := g.Inline(ctx, askDone)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	for range 3 {
		inline(false) // the first calls may come before the reader settles
	}
	for i := range 5 {
		// (A call stretched past inlineSlow by a busy machine makes the
		// next one pass the token on first: a few tries.)
		in := false
		for range 10 {
			if in = inline(false); in {
				break
			}
		}
		if !in {
			t.Fatalf("round %d: a quick call was not served inline", i)
		}
		if inline(true) {
			t.Fatalf("round %d: a call that asked for Done still kept the read token", i)
		}
		if inline(false) {
			t.Fatalf("round %d: the call after one that asked for Done was served inline", i)
		}
	}
}

// TestInlineLearnsSlowMethods: a method whose last call took longer than
// inlineSlow is not served inline, and is again once a call was quick;
// time spent waiting for a callback does not count.
func TestInlineLearnsSlowMethods(t *testing.T) {
	ctx, g, _ := gatePair(t)
	f := lookupIface(typeOf[Gate]())
	noInline := func(name string) bool { return f.methods[name].speed.Load() == speedSlow }
	if err := g.Sleep(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if !noInline("Sleep") {
		t.Fatal("a 2 ms call left its method to be served inline")
	}
	// (A quick call stretched past inlineSlow by a loaded machine, which
	// happened once with three test packages running at once, leaves
	// the method slow: a few tries.)
	for i := 0; ; i++ {
		if err := g.Sleep(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if !noInline("Sleep") {
			break
		}
		if i == 9 {
			t.Fatal("ten quick calls in a row left their method marked slow")
		}
	}
	// (The rest of Relay is quick, but a loaded machine, or the race
	// detector, can stretch calls past inlineSlow, a tenth of them under
	// -race here, several in a row when the machine is busy: one quick
	// call of twenty is asked for.)
	quick := false
	for range 20 {
		if err := g.Relay(ctx, slowListener{}); err != nil {
			t.Fatal(err)
		}
		quick = quick || !noInline("Relay")
	}
	if !quick {
		t.Fatal("waiting for a slow callback counted as a slow call")
	}
}

// stackProbe is a Listener that records whether Progress ran on the
// goroutine of a caller reading for its own reply.
type stackProbe struct{ inLead []bool }

func (p *stackProbe) Progress(ctx context.Context, done, total int) error {
	buf := make([]byte, 16<<10)
	buf = buf[:runtime.Stack(buf, false)]
	p.inLead = append(p.inLead, bytes.Contains(buf, []byte("rmi.(*Endpoint).lead(")))
	return nil
}

// TestLeaderServesQuickCallsInline: a callback that comes to a caller
// reading for its own reply runs on the caller's goroutine once its method
// is known to be quick (the first time, on a goroutine of its own).
func TestLeaderServesQuickCallsInline(t *testing.T) {
	ctx, g, _ := gatePair(t)
	f := lookupIface(typeOf[Listener]())
	f.methods["Progress"].speed.Store(speedUnknown)
	p := &stackProbe{}
	for range 10 {
		if err := g.Relay(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// (A loaded machine, or the race detector, can make one callback
	// slower than inlineSlow, and the next one is then not inline.)
	if p.inLead[0] || !slices.Contains(p.inLead[1:], true) {
		t.Fatalf("callbacks served by the leading caller: %v, want false and then some true", p.inLead)
	}
}

// TestInlineCallWaitingForPromise: a served call that waits for a promise
// of its own passes the read token on (the promise's reply must be read),
// rather than waiting for the 10 ms timer.
func TestInlineCallWaitingForPromise(t *testing.T) {
	ctx, g, obj := gatePair(t)
	local := &svc{nest: &nester{}}
	for i := range 5 {
		r := &obj.ep.rd
		r.mu.Lock()
		before := r.wdEnded
		r.mu.Unlock()
		after, err := g.PipeWait(ctx, local)
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Fatalf("call %d: the promise's reply was read only after the 10 ms timer ended the inline serving", i)
		}
	}
}

// TestDispatchCallClock: dispatchCall takes *clock, when set, as the
// start of its call (in a chain, the end of the call before, see
// runChain) and leaves the call's end there; 0 makes it read the clock.
// A start long past makes the method count as slow, as a slow call would.
func TestDispatchCallClock(t *testing.T) {
	_, b := pair(t)
	f := lookupIface(typeOf[Gate]())
	ex := &export{obj: &gate{ep: b}, f: f}
	speed := func() int32 { return f.methods["Sleep"].speed.Load() }
	call := func(clock *int64) {
		t.Helper()
		m := &wmsg{K: kCall, ID: 1, M: "Sleep", A: []cbor.RawMessage{{0}}} // Sleep(ctx, 0)
		c := &Served{ep: b, m: m, cc: new(callCtx)}
		c.it = m.args()
		c.ar, c.lent = c.buf[:0], c.lentA[:0]
		if err := b.dispatchCall(c, ex, clock); err != nil {
			t.Fatal(err)
		}
	}
	var clock int64
	before := monoNow()
	call(&clock)
	if clock < before || clock > monoNow() {
		t.Fatalf("clock %d after a call from %d, want its end", clock, before)
	}
	if speed() != speedQuick {
		t.Fatal("Sleep(0) counted as slow")
	}
	clock = monoNow() - int64(time.Second)
	call(&clock)
	if speed() != speedSlow {
		t.Fatal("a call started (by *clock) a second ago counted as quick")
	}
	if clock < monoNow()-int64(time.Second)/2 {
		t.Fatal("clock not set to the call's end")
	}
	clock = monoNow()
	call(&clock)
	if speed() != speedQuick {
		t.Fatal("Sleep(0) from a fresh clock counted as slow")
	}
}
