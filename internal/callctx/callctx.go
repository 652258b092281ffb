// Package callctx is the cancellable core of the contexts that rpc and rmi
// give the calls they serve. Such a context is cheaper than
// context.WithCancel: it registers with no parent (its server cancels it),
// it makes its Done channel only if something asks for it, and it
// implements the AfterFunc method that the context package uses to
// propagate cancellation to derived contexts without a goroutine.
//
// A Core provides Done, Err and AfterFunc; the type that embeds it adds
// Deadline and Value and cancels it with Cancel.
package callctx

import "sync"

// Core is the cancellable part of a context. The zero value is live.
type Core struct {
	mu     sync.Mutex
	done   chan struct{} // made by Done, closed by Cancel
	err    error
	afters []*afterFn
}

type afterFn struct{ f func() }

// closed is the Done channel of a context cancelled before anything asked
// for its channel.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done returns a channel closed once c is cancelled.
func (c *Core) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			return closed
		}
		c.done = make(chan struct{})
	}
	return c.done
}

// Err returns nil while c is live, then the error it was cancelled with.
func (c *Core) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc runs f on a goroutine of its own once c is cancelled (at once
// if it is). The returned stop unregisters f and reports whether it did
// (see context.AfterFunc).
func (c *Core) AfterFunc(f func()) func() bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	a := &afterFn{f: f}
	c.afters = append(c.afters, a)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.afters {
			if x == a {
				c.afters = append(c.afters[:i], c.afters[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Cancel ends c with err (not nil) and reports whether it was live: only
// the first Cancel counts. If it does and locked is not nil, locked runs
// first, under c's lock (for what the embedding type keeps with the
// cancellation, see With).
func (c *Core) Cancel(err error, locked func()) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	if locked != nil {
		locked()
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	fs := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, a := range fs {
		go a.f()
	}
	return true
}

// With runs f under c's lock: fields that the embedding type sets in a
// Cancel's locked function are read this way.
func (c *Core) With(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}
