//go:build linux

package shm

import (
	"context"
	"sync/atomic"
	"time"
	"unsafe"
)

// EventSize is the number of bytes an Event occupies in a region.
const EventSize = 8

// Event is a "wake me when it changes" notification living in shared memory:
// a 32-bit sequence number that Signal and Broadcast increment, and that
// Wait sleeps on until it differs from the value the caller last saw. Zeroed
// memory is a valid Event with sequence 0.
//
// The usual pattern is
//
//	seen := ev.Seq()
//	for !conditionHolds() { // condition read from shared memory
//		seen, err = ev.Wait(ctx, seen)
//	}
//
// which cannot miss a change made (and signalled) after Seq was read. An
// Event has no owner, so there is nothing to recover when a process dies. A
// sleeper counter lets Signal and Broadcast skip the system call when nobody
// sleeps; a process killed while sleeping leaves it too high, which only costs
// unneeded wake-up calls.
//
// An Event value is a handle; it is safe for concurrent use by multiple
// goroutines and processes.
type Event struct {
	seq     *uint32
	waiters *uint32
}

// NewEvent returns a handle to the Event at user-area offset off of r; off
// must be 8-byte aligned and off+EventSize must fit in the region.
func NewEvent(r *Region, off int) (*Event, error) {
	p, err := r.at(off, EventSize, "NewEvent")
	if err != nil {
		return nil, err
	}
	return &Event{seq: (*uint32)(p), waiters: (*uint32)(unsafe.Add(p, 4))}, nil
}

// Seq returns the current sequence number.
func (e *Event) Seq() uint32 { return atomic.LoadUint32(e.seq) }

// Wait blocks until the sequence number differs from seen, and returns the
// new value; or until ctx is done, returning seen and ctx.Err(). With a ctx
// that can be cancelled, Wait sleeps in slices of at most 10 ms to notice
// cancellation; with a ctx that cannot (context.Background), it sleeps until
// woken.
func (e *Event) Wait(ctx context.Context, seen uint32) (uint32, error) {
	for {
		if s := atomic.LoadUint32(e.seq); s != seen {
			return s, nil
		}
		if err := ctx.Err(); err != nil {
			return seen, err
		}
		d := time.Duration(-1)
		if ctx.Done() != nil {
			var err error
			if d, err = sliceFor(ctx, maxSlice); err != nil {
				return seen, err
			}
		}
		atomic.AddUint32(e.waiters, 1)
		futexWait(e.seq, seen, d)
		atomic.AddUint32(e.waiters, ^uint32(0))
	}
}

// Signal increments the sequence number and wakes one sleeping waiter.
// Other waiters are not woken, but each returns as soon as it next looks at
// the sequence (at the latest at the end of its current 10 ms slice, or
// never while asleep with a context that cannot be cancelled); Signal is a
// cheaper Broadcast for when any one waiter can handle the change, not an
// exclusive hand-off (use Semaphore for that).
func (e *Event) Signal() {
	atomic.AddUint32(e.seq, 1)
	if atomic.LoadUint32(e.waiters) != 0 {
		futexWake(e.seq, 1)
	}
}

// Broadcast increments the sequence number and wakes every waiter.
func (e *Event) Broadcast() {
	atomic.AddUint32(e.seq, 1)
	if atomic.LoadUint32(e.waiters) != 0 {
		futexWake(e.seq, wakeAll)
	}
}
