package rpc

import (
	"context"
	"errors"

	"github.com/loft-ipc/loft"
)

// Replies arrive on one loft channel; some goroutine must receive them
// and hand each to its call. A dedicated reader goroutine would cost every
// blocking call one more goroutine wake-up (reader, then caller). Instead
// the goroutines blocked in Call share a reader token:
//
//   - A caller that finds no reader becomes the reader (leads): it receives
//     replies itself, hands the others' replies to their callers, and
//     returns as soon as its own has come. With one call in flight the
//     reply goes from the connection's reader straight to the caller.
//   - A caller that finds a reader waits (follows) on its call's done
//     channel, for its outcome or for the token.
//   - A leader whose call finished passes the token to the first follower,
//     or, if only futures (Go, Enqueue) are pending, to the background
//     reader goroutine, which holds it while no caller wants it.
//
// done of a blocking call is a buffered channel of one; woken says a value
// is in it, so that a sender never blocks. A leader blocked in Recv is
// interrupted (its receive context cancelled and replaced) when its own
// call finishes another way (its context ended, the server died, Close),
// and the background reader when a caller starts following.
//
// Everything here is guarded by Client.mu.

// completeLocked removes a pending call whose outcome (cl.err, or the reply
// fields) is set, and notifies its waiter: a blocking call gets its token
// (or its leader is interrupted); for a future it returns true, and the
// caller must closeFutures it once c.mu is released. self is the call of
// the goroutine completing it, which needs no notice.
func (c *Client) completeLocked(cl, self *call) bool {
	delete(c.pending, cl.id)
	c.finishLocked(cl)
	cl.finished = true
	switch {
	case cl == self:
		return false
	case cl.fut:
		return true
	case cl.leading:
		c.interruptLocked()
	default:
		c.wakeLocked(cl)
	}
	return false
}

func closeFutures(cls []*call) {
	for _, cl := range cls {
		if cl.stop != nil {
			cl.stop()
		}
		close(cl.done)
	}
}

func (c *Client) wakeLocked(cl *call) {
	if !cl.woken {
		cl.woken = true
		cl.done <- struct{}{}
	}
}

// interruptLocked ends the receive of whoever holds the token.
func (c *Client) interruptLocked() {
	c.readCancel()
	c.readCtx, c.readCancel = context.WithCancel(c.ctx)
}

// releaseTokenLocked gives the token up: to the first follower, else to
// the background reader if calls are pending (the background reader
// itself keeps it then), else to nobody.
func (c *Client) releaseTokenLocked(bg bool) {
	for _, f := range c.followers {
		if !f.finished && !f.promoted {
			f.promoted = true
			c.bgReading = false
			c.wakeLocked(f)
			return
		}
	}
	if len(c.pending) > 0 && !c.closed {
		if !bg {
			c.bgReading = true
			select {
			case c.bgKick <- struct{}{}:
			default:
			}
		}
		return
	}
	c.readerHeld = false
	c.bgReading = false
}

// ensureReader gives the token to the background reader if nobody holds
// it: futures are pending and no caller is waiting.
func (c *Client) ensureReader() {
	c.mu.Lock()
	if !c.readerHeld && len(c.pending) > 0 {
		c.readerHeld = true
		c.bgReading = true
		select {
		case c.bgKick <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
}

func (c *Client) removeFollowerLocked(cl *call) {
	for i, f := range c.followers {
		if f == cl {
			c.followers = append(c.followers[:i], c.followers[i+1:]...)
			return
		}
	}
}

// drainLocked takes the value out of a blocking call's done, if one is
// there.
func drainLocked(cl *call) {
	if cl.woken {
		<-cl.done
		cl.woken = false
	}
}

// await waits for a blocking call started by start, leading or following.
// If ctx ends first the call is abandoned, the server told to cancel it,
// and await returns the context's error.
func (c *Client) await(ctx context.Context, cl *call) error {
	c.mu.Lock()
	for {
		if cl.finished {
			drainLocked(cl)
			c.mu.Unlock()
			return nil
		}
		if !c.readerHeld {
			c.readerHeld = true
			cl.leading = true
			c.mu.Unlock()
			return c.lead(ctx, cl)
		}
		c.followers = append(c.followers, cl)
		if c.bgReading {
			c.interruptLocked() // so that it hands the token over
		}
		c.mu.Unlock()
		var err error
		select {
		case <-cl.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		c.mu.Lock()
		c.removeFollowerLocked(cl)
		if err == nil {
			cl.woken = false
		}
		if cl.promoted {
			cl.promoted = false
			drainLocked(cl)
			if err == nil && !cl.finished {
				cl.leading = true
				c.mu.Unlock()
				return c.lead(ctx, cl)
			}
			c.releaseTokenLocked(false)
		}
		if err != nil && !cl.finished {
			c.abandonLocked(cl)
			drainLocked(cl)
			c.mu.Unlock()
			return c.gaveUp(cl, err)
		}
	}
}

// abandonLocked removes a call whose caller gave up.
func (c *Client) abandonLocked(cl *call) {
	delete(c.pending, cl.id)
	c.finishLocked(cl)
	cl.finished = true
}

// gaveUp tells the server of an abandoned call to cancel it, unless the
// deadline that ended it travelled with it, and returns the caller's
// error.
func (c *Client) gaveUp(cl *call, err error) error {
	if !(cl.deadline && errors.Is(err, context.DeadlineExceeded)) {
		c.sendCancel(cl)
	}
	return localError(c.service, cl.method, err)
}

// lead receives replies, holding the token, until cl has finished or ctx
// ends.
func (c *Client) lead(ctx context.Context, cl *call) error {
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, c.interrupt)
	}
	for {
		c.mu.Lock()
		if cl.finished {
			cl.leading = false
			c.releaseTokenLocked(false)
			c.mu.Unlock()
			if stop != nil {
				stop()
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			cl.leading = false
			c.abandonLocked(cl)
			c.releaseTokenLocked(false)
			c.mu.Unlock()
			return c.gaveUp(cl, err)
		}
		rctx := c.readCtx
		c.mu.Unlock()
		m, err := c.reply.Recv(rctx)
		if err != nil {
			if errors.Is(err, loft.ErrClosed) {
				c.replyClosed()
			}
			continue
		}
		c.deliver(m, cl)
	}
}

// replyClosed fails every pending call once the reply channel is closed:
// by Close (then they are failed already), or because the node was closed
// under the client, which is then unusable.
func (c *Client) replyClosed() {
	c.mu.Lock()
	c.closed = true
	var futs []*call
	for _, cl := range c.pending {
		cl.err = &Error{Code: Unavailable, Service: c.service, Method: cl.method, Message: "the client's node was closed", Err: loft.ErrClosed}
		if c.completeLocked(cl, nil) {
			futs = append(futs, cl)
		}
	}
	c.mu.Unlock()
	closeFutures(futs)
}

// bgRead holds the token for futures when no caller does.
func (c *Client) bgRead() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.bgKick:
		}
		for {
			c.mu.Lock()
			if c.bgReading {
				// Hand over to a follower, or stop with nothing pending.
				c.releaseTokenLocked(true)
			}
			if !c.bgReading {
				c.mu.Unlock()
				break
			}
			rctx := c.readCtx
			c.mu.Unlock()
			m, err := c.reply.Recv(rctx)
			if err != nil {
				if c.ctx.Err() != nil {
					return
				}
				if errors.Is(err, loft.ErrClosed) {
					c.replyClosed()
				}
				continue
			}
			c.deliver(m, nil)
		}
	}
}

// deliver hands a reply to its call. self is the caller's own call if a
// caller is delivering.
func (c *Client) deliver(m loft.Message, self *call) {
	var e envelope
	if err := parseEnvelope(m.Data, &e); err != nil || e.kind != kindReply {
		c.badReply.Add(1)
		c.log.Debug("malformed reply dropped", "from", m.From, "err", err)
		return
	}
	c.mu.Lock()
	cl := c.pending[e.id]
	if cl == nil || cl.r == nil || cl.r.node != "" && cl.r.node != m.From {
		// A reply to a call abandoned, or from a node the call did not
		// go to.
		c.mu.Unlock()
		return
	}
	cl.code = Code(e.code)
	if len(e.msg) > 0 {
		cl.msg = string(e.msg)
	}
	cl.data = e.payload
	cl.rcodec = e.codec
	fut := c.completeLocked(cl, self)
	var retired *route
	if r := cl.r; r.draining && r.pending == 0 && !r.dead {
		r.dead = true
		c.removeRouteLocked(r)
		retired = r
	}
	c.mu.Unlock()
	if fut {
		if cl.stop != nil {
			cl.stop()
		}
		close(cl.done)
	}
	if retired != nil {
		retired.s.Close()
	}
}
