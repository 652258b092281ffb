package rpc

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft/internal/callctx"
)

// callCtx is the context of one call on the server: a callctx.Core (see
// there why it is cheaper than context.WithCancel plus WithDeadline) with
// the call's deadline, for which it arms a timer, and its CallInfo.
type callCtx struct {
	callctx.Core
	base     context.Context // values only
	info     CallInfo
	deadline time.Time

	// A call run by a pool's worker itself (see pool): its Done starts
	// another worker, once (asked).
	inline *pool
	srv    *Server
	asked  atomic.Bool

	// Under the Core's lock (set in Cancel's locked function, read with With).
	timer    *time.Timer
	byClient bool // cancelled by the client: the reply is not wanted
	closing  bool // cancelled because the server is closing
}

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

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

// Done returns the channel closed when the call ends. A handler asking for
// it is about to wait: if it runs on the worker that receives, another
// worker starts receiving (see pool).
func (c *callCtx) Done() <-chan struct{} {
	if c.inline != nil && !c.asked.Load() && c.asked.CompareAndSwap(false, true) {
		c.srv.helpSlow(c.inline)
	}
	return c.Core.Done()
}

func (c *callCtx) Value(key any) any {
	if key == (callInfoKey{}) {
		return &c.info
	}
	return c.base.Value(key)
}

func (c *callCtx) String() string { return "rpc.callCtx(" + c.info.Service + "." + c.info.Method + ")" }

// armDeadline arms the timer that cancels the call at its deadline.
func (c *callCtx) armDeadline() {
	// (Under the lock: a deadline already past fires at once, and the
	// timer's cancel stops c.timer.)
	c.With(func() {
		c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.cancel(context.DeadlineExceeded, false) })
	})
}

// cancel ends the context with err; it reports whether it was still live.
func (c *callCtx) cancel(err error, byClient bool) bool {
	return c.Cancel(err, func() {
		c.byClient = byClient
		if c.timer != nil {
			c.timer.Stop()
		}
	})
}

// release stops the deadline timer once the handler returned.
func (c *callCtx) release() {
	c.With(func() {
		if c.timer != nil {
			c.timer.Stop()
		}
	})
}

func (c *callCtx) cancelledByClient() (b bool) {
	c.With(func() { b = c.byClient })
	return b
}

// cancelClosing cancels the call because the server is closing.
func (c *callCtx) cancelClosing() {
	c.Cancel(context.Canceled, func() {
		c.closing = true
		if c.timer != nil {
			c.timer.Stop()
		}
	})
}

func (c *callCtx) isClosing() (b bool) {
	c.With(func() { b = c.closing })
	return b
}
