package rpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/loft-ipc/loft"
)

var appendUvarint = binary.AppendUvarint

// Future is the result of a call started with Go or Enqueue, to be had
// later. Its methods are safe for concurrent use; the result is decoded
// once.
type Future[Resp any] struct {
	c    *Client
	cl   *call
	once sync.Once
	resp Resp
	err  error
}

// Go starts a call and returns at once with its future: it does not wait
// for the reply, only (like a channel send) for a server to exist and to
// have room. ctx governs the call as for Call: when it ends the call is
// cancelled on the server and the future fails with Canceled or
// DeadlineExceeded.
func Go[Req, Resp any](ctx context.Context, c *Client, method string, req Req) *Future[Resp] {
	f := &Future[Resp]{c: c, cl: &call{fut: true, done: make(chan struct{})}}
	if err := c.start(ctx, f.cl, method, c.codecID, c.codec, req); err != nil {
		f.cl.err = err
		close(f.cl.done)
		return f
	}
	c.watchCtx(ctx, f.cl)
	c.ensureReader()
	return f
}

// watchCtx abandons and cancels a future's call when ctx ends first.
func (c *Client) watchCtx(ctx context.Context, cl *call) {
	if ctx.Done() == nil {
		return
	}
	c.mu.Lock()
	if c.pending[cl.id] == cl {
		cl.stop = context.AfterFunc(ctx, func() {
			c.mu.Lock()
			if c.pending[cl.id] != cl {
				c.mu.Unlock()
				return
			}
			err := ctx.Err()
			cl.err = localError(c.service, cl.method, err)
			c.completeLocked(cl, cl)
			c.mu.Unlock()
			if !(cl.deadline && err == context.DeadlineExceeded) {
				c.sendCancel(cl)
			}
			close(cl.done)
		})
	}
	c.mu.Unlock()
}

// Done is closed when the call has finished.
func (f *Future[Resp]) Done() <-chan struct{} { return f.cl.done }

// Wait waits for the call to finish and returns its result. If ctx ends
// first, Wait returns ctx's error and the call goes on (cancel it with the
// context given to Go).
func (f *Future[Resp]) Wait(ctx context.Context) (Resp, error) {
	select {
	case <-f.cl.done:
	case <-ctx.Done():
		var zero Resp
		return zero, localError(f.c.service, f.cl.method, fmt.Errorf("waiting for the result: %w", ctx.Err()))
	}
	return f.result()
}

func (f *Future[Resp]) result() (Resp, error) {
	f.once.Do(func() {
		f.err = f.c.outcome(f.cl, f.c.codec, f.c.codecID, &f.resp)
	})
	return f.resp, f.err
}

// Then runs fn with the result once the call has finished, on a goroutine
// of its own.
func (f *Future[Resp]) Then(fn func(Resp, error)) {
	go func() {
		<-f.cl.done
		fn(f.result())
	}()
}

// Batch collects calls to send at once, in one message to one server:
// one write and one wake-up for all of them. Replies come back one by one,
// in any order. A Batch is for one goroutine; it can be sent once.
type Batch struct {
	c     *Client
	items []batchItem
	sent  bool
}

type batchItem struct {
	cl      *call
	payload []byte
}

// NewBatch returns an empty batch of calls on c.
func (c *Client) NewBatch() *Batch { return &Batch{c: c} }

// Len returns the number of calls in the batch.
func (b *Batch) Len() int { return len(b.items) }

// Enqueue adds a call to the batch and returns its future, which finishes
// once the batch was sent and the reply came (or the batch failed).
func Enqueue[Req, Resp any](b *Batch, method string, req Req) *Future[Resp] {
	f := &Future[Resp]{c: b.c, cl: &call{fut: true, done: make(chan struct{}), method: method}}
	switch {
	case b.sent:
		f.cl.err = &Error{Code: FailedPrecondition, Service: b.c.service, Method: method, Message: "batch already sent"}
		close(f.cl.done)
		return f
	case len(b.items) >= maxBatchCalls:
		f.cl.err = &Error{Code: ResourceExhausted, Service: b.c.service, Method: method, Message: fmt.Sprintf("a batch holds at most %d calls", maxBatchCalls)}
		close(f.cl.done)
		return f
	case len(method) == 0 || len(method) > maxMethodLen:
		f.cl.err = &Error{Code: InvalidArgument, Service: b.c.service, Method: method, Message: "method name must be 1 to 255 bytes"}
		close(f.cl.done)
		return f
	}
	buf := getBuf()
	err := marshalTo(b.c.codec, buf, req)
	payload := append([]byte(nil), buf.Bytes()...)
	putBuf(buf)
	if err != nil {
		f.cl.err = &Error{Code: Internal, Service: b.c.service, Method: method, Message: fmt.Sprintf("encoding the arguments with %s: %v", b.c.codec.Name(), err), Err: err}
		close(f.cl.done)
		return f
	}
	b.items = append(b.items, batchItem{cl: f.cl, payload: payload})
	return f
}

// Send sends every call of the batch in one message. ctx governs the calls
// as for Go: its deadline travels with each, and when it ends the calls
// still pending are cancelled. Send returns an error if the batch could
// not be sent; the futures then fail with it too.
func (b *Batch) Send(ctx context.Context) error {
	if b.sent {
		return &Error{Code: FailedPrecondition, Service: b.c.service, Message: "batch already sent"}
	}
	b.sent = true
	if len(b.items) == 0 {
		return nil
	}
	c := b.c
	var dl int64
	if d, ok := ctx.Deadline(); ok {
		dl = max(d.UnixNano(), 1)
	}
	buf := getBuf()
	defer putBuf(buf)
	buf.Write(appendBatchHeader(buf.AvailableBuffer(), len(b.items)))
	var one []byte
	for _, it := range b.items {
		it.cl.id = c.nextID.Add(1)
		it.cl.deadline = dl != 0
		one = appendCall(one[:0], c.codecID, it.cl.id, c.replyTo, it.cl.method, dl)
		one = append(one, it.payload...)
		buf.Write(appendUvarint(buf.AvailableBuffer(), uint64(len(one))))
		buf.Write(one)
	}
	owned, err := c.sendMany(ctx, b.items, buf.Bytes())
	if err != nil {
		for _, cl := range owned {
			cl.err = err
			close(cl.done)
		}
		return err
	}
	for _, it := range b.items {
		c.watchCtx(ctx, it.cl)
	}
	c.ensureReader()
	return nil
}

// sendMany sends one message carrying several calls to one server. On
// failure it returns the calls that are still the caller's to finish.
func (c *Client) sendMany(ctx context.Context, items []batchItem, msg []byte) ([]*call, error) {
	all := make([]*call, len(items))
	for i, it := range items {
		all[i] = it.cl
	}
	if len(msg) > c.opts.MaxMessageSize+envelopeSlack {
		return all, &Error{Code: ResourceExhausted, Service: c.service, Message: fmt.Sprintf("the batch is %d bytes, the limit is %d", len(msg), c.opts.MaxMessageSize)}
	}
	for i := range items {
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			for range i {
				<-c.sem
			}
			return all, localError(c.service, "", ctx.Err())
		}
	}
	// The slots are released as the calls finish; on failure here, now.
	release := func(n int) {
		for range n {
			<-c.sem
		}
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			release(len(items))
			return all, &Error{Code: Canceled, Service: c.service, Err: ErrClientClosed}
		}
		r := c.pickLocked()
		if r == nil {
			ch := c.changed
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				release(len(items))
				return all, localError(c.service, "", ctx.Err())
			}
		}
		for _, it := range items {
			it.cl.r = r
			c.pending[it.cl.id] = it.cl
		}
		r.pending += len(items)
		c.mu.Unlock()
		err := r.s.Send(ctx, msg)
		c.mu.Lock()
		if err == nil {
			n := 0
			for _, it := range items {
				if c.pending[it.cl.id] == it.cl {
					it.cl.sent = true
					n++
				}
			}
			c.sentPending += n
			kick := !c.pollActive
			c.pollActive = true
			c.mu.Unlock()
			if kick {
				c.kickPoll()
			}
			return nil, nil
		}
		// Not sent. Calls finished meanwhile (by Close) gave back
		// their slots; give back the others.
		var owned []*call
		for _, it := range items {
			if c.pending[it.cl.id] == it.cl {
				delete(c.pending, it.cl.id)
				r.pending--
				owned = append(owned, it.cl)
			}
		}
		n := len(owned)
		retry := false
		if (errors.Is(err, loft.ErrPeerGone) || errors.Is(err, loft.ErrClosed)) && r.node != "" && n == len(items) {
			r.draining = true
			retry = ctx.Err() == nil
		}
		c.mu.Unlock()
		if retry {
			c.checkRoute(r)
			continue
		}
		release(n)
		return owned, localError(c.service, "", err)
	}
}
