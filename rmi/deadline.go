package rmi

import (
	"container/heap"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft/internal/callctx"
)

// A served call carries its caller's deadline (the TO of the call). A
// context.WithTimeout per served call would arm a runtime timer per call,
// and arming a timer that is the earliest of its P wakes a thread (the
// netpoller's, or a new spinning one): one more thread wake-up per call on
// both cores of a small machine. So the endpoint keeps the deadlines of
// the calls it serves in a heap with one timer, armed for the earliest
// and re-armed only when a call comes with an earlier one (callers'
// deadlines are typically far and later than those before them). And
// only the deadlines of calls that could wait for them: a deadline goes
// into the heap when something asks the call's context for Done or
// AfterFunc (directly, by deriving a context, or by a remote call of its
// own waiting for a reply); Err compares the deadline with the clock
// itself. A quick call that never waits costs no lock and no heap work.

// callCtx is the context of a served call: a callctx.Core (one allocation
// per served call, a Done channel only if something asks for it, AfterFunc
// so that derived contexts need no goroutine) with the caller's deadline.
type callCtx struct {
	callctx.Core
	ep      *Endpoint
	asked   atomic.Bool  // Done was called
	awaited atomic.Int64 // time the call spent waiting for its own remote calls
	dl      dlEntry      // dl.at is the deadline when hasDL
	hasDL   bool
	watched atomic.Bool // dl went into the heap, or the call ended first (see watch)
}

// Err returns why the call's context ended, nil while it runs. Past the
// deadline it ends it, whether or not a timer watches the deadline.
func (c *callCtx) Err() error {
	if err := c.Core.Err(); err != nil || !c.hasDL {
		return err
	}
	if !time.Now().Before(c.dl.at) {
		c.cancel(context.DeadlineExceeded)
	}
	return c.Core.Err()
}

// AfterFunc is the callctx.Core's, with the deadline watched (what
// context.AfterFunc and derived contexts use).
func (c *callCtx) AfterFunc(f func()) func() bool {
	c.watch()
	return c.Core.AfterFunc(f)
}

// watch puts the call's deadline, if any, in the endpoint's heap (once,
// and not after end), so that the timer ends the call at its deadline.
func (c *callCtx) watch() {
	if !c.hasDL || c.watched.Load() {
		return
	}
	d := &c.ep.dls
	d.mu.Lock()
	if c.watched.CompareAndSwap(false, true) { // (end may have won)
		heap.Push(&d.h, &c.dl)
		if !d.armed || c.dl.at.Before(d.at) {
			to := time.Until(c.dl.at)
			if d.t == nil {
				d.t = time.AfterFunc(to, c.ep.expire)
			} else {
				d.t.Reset(to)
			}
			d.armed, d.at = true, c.dl.at
		}
	}
	d.mu.Unlock()
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.dl.at, c.hasDL }

// Done returns the channel closed when the call is cancelled. A call that
// asks for it may wait for a cancel, which only a reader sees: the
// background reader that serves it passes the read token on (see
// Endpoint.blocking).
func (c *callCtx) Done() <-chan struct{} {
	if !c.asked.Load() {
		c.asked.Store(true)
		c.ep.blocking()
	}
	c.watch()
	return c.Core.Done()
}

// doneOf is ctx.Done() for the endpoint's own waits for replies, which do
// not count as the served call asking for Done: the caller waiting reads,
// or is handed what it waits for.
func doneOf(ctx context.Context) <-chan struct{} {
	if c, ok := ctx.(*callCtx); ok {
		c.watch()
		return c.Core.Done()
	}
	return ctx.Done()
}

// afterDone is context.AfterFunc(ctx, f) for the endpoint's own waits,
// which do not count as the served call asking for Done.
func afterDone(ctx context.Context, f func()) (stop func() bool) {
	if c, ok := ctx.(*callCtx); ok {
		c.watch()
		return c.Core.AfterFunc(f)
	}
	if ctx.Done() == nil {
		return nil
	}
	return context.AfterFunc(ctx, f)
}

func (c *callCtx) Value(key any) any {
	if key == (ccKey{}) {
		return c
	}
	return nil
}

// ccKey finds the callCtx under contexts derived from it.
type ccKey struct{}

// ccOf returns the context of the served call that ctx is or derives
// from, or nil.
func ccOf(ctx context.Context) *callCtx {
	if c, ok := ctx.(*callCtx); ok {
		return c
	}
	c, _ := ctx.Value(ccKey{}).(*callCtx)
	return c
}

func (c *callCtx) String() string { return "rmi.callContext" }

// cancel ends c with err (context.Canceled or context.DeadlineExceeded);
// only the first cancel counts.
func (c *callCtx) cancel(err error) { c.Cancel(err, nil) }

// end is called when the call returns: it forgets the deadline and
// cancels c.
func (c *callCtx) end() {
	if c.hasDL && !c.watched.CompareAndSwap(false, true) {
		// watch put the deadline in the heap (expire may have taken it).
		d := &c.ep.dls
		d.mu.Lock()
		if c.dl.i >= 0 {
			heap.Remove(&d.h, c.dl.i)
		}
		d.mu.Unlock()
	}
	c.cancel(context.Canceled)
}

// deadlines holds the served calls that have a deadline.
type deadlines struct {
	mu    sync.Mutex
	h     dlHeap
	t     *time.Timer
	armed bool
	at    time.Time // when t fires, if armed
}

type dlEntry struct {
	at  time.Time
	ctx *callCtx
	i   int // index in the heap, -1 once removed
}

type dlHeap []*dlEntry

func (h dlHeap) Len() int           { return len(h) }
func (h dlHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dlHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].i = i; h[j].i = j }
func (h *dlHeap) Push(x any)        { e := x.(*dlEntry); e.i = len(*h); *h = append(*h, e) }
func (h *dlHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.i = -1
	return e
}

// callContext returns the context of a served call, which end cancels;
// if to > 0 it expires to after now (see watch). The endpoint's end (or its peer's)
// cancels it through peer.running (see serve): deriving it from the
// endpoint's context would lock that context and add to its children per
// call.
func (ep *Endpoint) callContext(to time.Duration) *callCtx {
	c := &callCtx{}
	ep.initCallContext(c, to, monoNow())
	return c
}

// initCallContext makes the zero *c the context of a served call, as
// callContext (for a callCtx allocated with the rest of a served call);
// now is monoNow() (one clock read for the caller's timing and this).
func (ep *Endpoint) initCallContext(c *callCtx, to time.Duration, now int64) {
	c.ep = ep
	if to <= 0 {
		return
	}
	c.hasDL = true
	c.dl = dlEntry{at: monoStart.Add(time.Duration(now) + to), ctx: c}
}

// expire cancels the served calls whose deadline passed and arms the
// timer for the next one.
func (ep *Endpoint) expire() {
	d := &ep.dls
	var exp []*dlEntry
	d.mu.Lock()
	now := time.Now()
	for len(d.h) > 0 && !d.h[0].at.After(now) {
		exp = append(exp, heap.Pop(&d.h).(*dlEntry))
	}
	d.armed = len(d.h) > 0
	if d.armed {
		d.at = d.h[0].at
		d.t.Reset(d.at.Sub(now))
	}
	d.mu.Unlock()
	for _, e := range exp {
		e.ctx.cancel(context.DeadlineExceeded)
	}
}

// stopDeadlines stops the timer (Close).
func (ep *Endpoint) stopDeadlines() {
	d := &ep.dls
	d.mu.Lock()
	if d.t != nil {
		d.t.Stop()
	}
	d.armed = false
	d.mu.Unlock()
}
