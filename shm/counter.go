//go:build linux

package shm

import "sync/atomic"

// CounterSize is the number of bytes a Counter occupies in a region.
const CounterSize = 8

// Counter is an int64 in shared memory accessed only atomically. Zeroed memory
// is a Counter holding 0. A Counter value is a handle; it is safe for
// concurrent use by multiple goroutines and processes.
type Counter struct {
	p *int64
}

// NewCounter returns a handle to the Counter at user-area offset off of r;
// off must be 8-byte aligned and off+CounterSize must fit in the region.
func NewCounter(r *Region, off int) (*Counter, error) {
	p, err := r.at(off, CounterSize, "NewCounter")
	if err != nil {
		return nil, err
	}
	return &Counter{p: (*int64)(p)}, nil
}

// Add adds delta and returns the new value.
func (c *Counter) Add(delta int64) int64 { return atomic.AddInt64(c.p, delta) }

// Load returns the value.
func (c *Counter) Load() int64 { return atomic.LoadInt64(c.p) }

// Store sets the value.
func (c *Counter) Store(v int64) { atomic.StoreInt64(c.p, v) }

// Swap sets the value and returns the old one.
func (c *Counter) Swap(v int64) int64 { return atomic.SwapInt64(c.p, v) }

// CompareAndSwap sets the value to new if it is old, and reports whether it
// did.
func (c *Counter) CompareAndSwap(old, new int64) bool {
	return atomic.CompareAndSwapInt64(c.p, old, new)
}
