package rmi

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// A served call carries its caller's deadline (the TO of the call). A
// context.WithTimeout per served call would arm a runtime timer per call,
// and arming a timer that is the earliest of its P wakes a thread (the
// netpoller's, or a new spinning one): one more thread wake-up per call on
// both cores of a small machine. So the endpoint keeps the deadlines of
// the calls it serves in a heap with one timer, armed for the earliest
// and re-armed only when a call comes with an earlier one (callers'
// deadlines are typically far and later than those before them).

// callCtx is the context of a served call that has a deadline: Deadline
// reports it, and Err reports context.DeadlineExceeded once the
// deadlines' timer cancelled it.
type callCtx struct {
	context.Context // from context.WithCancelCause
	dl              time.Time
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.dl, true }

func (c *callCtx) Err() error {
	err := c.Context.Err()
	if err != nil && context.Cause(c.Context) == context.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return err
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
	at     time.Time
	cancel context.CancelCauseFunc
	i      int // index in the heap, -1 once removed
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

// callContext returns the context of a served call: cancelled by cancel
// and, if to > 0, to after now. The endpoint's end (or its peer's) cancels
// it through peer.running (see serve): deriving it from the endpoint's
// context would lock that context and add to its children per call.
func (ep *Endpoint) callContext(to time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	if to <= 0 {
		return ctx, func() { cancel(context.Canceled) }
	}
	d := &ep.dls
	e := &dlEntry{at: time.Now().Add(to), cancel: cancel}
	d.mu.Lock()
	heap.Push(&d.h, e)
	if !d.armed || e.at.Before(d.at) {
		if d.t == nil {
			d.t = time.AfterFunc(to, ep.expire)
		} else {
			d.t.Reset(to)
		}
		d.armed, d.at = true, e.at
	}
	d.mu.Unlock()
	return &callCtx{Context: ctx, dl: e.at}, func() {
		d.mu.Lock()
		if e.i >= 0 {
			heap.Remove(&d.h, e.i)
		}
		d.mu.Unlock()
		cancel(context.Canceled)
	}
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
		e.cancel(context.DeadlineExceeded)
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
