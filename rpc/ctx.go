package rpc

import (
	"context"
	"sync"
	"time"
)

// callCtx is the context of one call on the server. It is cheaper than
// context.WithCancel plus WithDeadline: it registers with no parent (the
// server cancels every call itself when it closes), makes its Done channel
// only if the handler asks for it, and arms a timer only for a deadline.
// It implements the AfterFunc method that the context package uses to
// propagate cancellation to derived contexts without a goroutine.
type callCtx struct {
	base     context.Context // values only
	info     CallInfo
	deadline time.Time

	mu       sync.Mutex
	done     chan struct{}
	err      error
	timer    *time.Timer
	afters   map[*afterFn]struct{}
	byClient bool // cancelled by the client: the reply is not wanted
	closing  bool // cancelled because the server is closing
}

type afterFn struct{ f func() }

// CallInfo describes the call a handler is running. Get it with
// CallInfoFrom(ctx).
type CallInfo struct {
	Service, Method string
	// Node is the id of the client's loft node.
	Node string
	// ReplyTo is where the reply goes: a channel name or a URL.
	ReplyTo string
	// Codec is the name of the codec the arguments came in.
	Codec string
}

type callInfoKey struct{}

// CallInfoFrom returns the description of the call whose handler context
// ctx is (or derives from).
func CallInfoFrom(ctx context.Context) (CallInfo, bool) {
	ci, ok := ctx.Value(callInfoKey{}).(*CallInfo)
	if !ok {
		return CallInfo{}, false
	}
	return *ci, true
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			return closedChan
		}
		c.done = make(chan struct{})
	}
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *callCtx) Value(key any) any {
	if key == (callInfoKey{}) {
		return &c.info
	}
	return c.base.Value(key)
}

func (c *callCtx) String() string { return "rpc.callCtx(" + c.info.Service + "." + c.info.Method + ")" }

// AfterFunc runs f once the context is cancelled; see context.AfterFunc.
func (c *callCtx) AfterFunc(f func()) func() bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	a := &afterFn{f: f}
	if c.afters == nil {
		c.afters = map[*afterFn]struct{}{}
	}
	c.afters[a] = struct{}{}
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.afters[a]; ok {
			delete(c.afters, a)
			return true
		}
		return false
	}
}

// cancel ends the context with err; it reports whether it was still live.
func (c *callCtx) cancel(err error, byClient bool) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err = err
	c.byClient = byClient
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for a := range afters {
		go a.f()
	}
	return true
}

// release stops the deadline timer once the handler returned.
func (c *callCtx) release() {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
}

func (c *callCtx) cancelledByClient() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byClient
}

// cancelClosing cancels the call because the server is closing.
func (c *callCtx) cancelClosing() {
	c.mu.Lock()
	if c.err == nil {
		c.closing = true
	}
	c.mu.Unlock()
	c.cancel(context.Canceled, false)
}

func (c *callCtx) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}
