//go:build linux

package shm

import (
	"context"
	"sync/atomic"
)

// MutexSize is the number of bytes a Mutex occupies in a region.
const MutexSize = 8

// Mutex is a robust mutual-exclusion lock living in shared memory, owned by a
// process (not a goroutine): any goroutine of the owning process may Unlock
// it, and it is not reentrant. Eight zero bytes are a valid unlocked Mutex, so
// a freshly created region needs no initialisation.
//
// If the owning process dies while holding the lock, the next locker acquires
// it and gets ErrOwnerDead; it must repair the protected state and call
// Consistent before Unlock, otherwise the lock becomes not recoverable.
//
// A Mutex value is a handle; it is safe for concurrent use by multiple
// goroutines and processes.
type Mutex struct {
	w lockWord
}

// NewMutex returns a handle to the Mutex at user-area offset off of r; off
// must be 8-byte aligned and off+MutexSize must fit in the region.
func NewMutex(r *Region, off int) (*Mutex, error) {
	p, err := r.at(off, MutexSize, "NewMutex")
	if err != nil {
		return nil, err
	}
	if _, _, err := selfID(); err != nil {
		return nil, err
	}
	return &Mutex{w: lockWord{p: (*uint64)(p)}}, nil
}

// Init stores the unlocked state. Zeroed memory already is unlocked, so Init
// is only needed to bring a lock back from ErrNotRecoverable, and must only be
// called while no process uses the lock.
func (m *Mutex) Init() { atomic.StoreUint64(m.w.p, 0) }

// Lock acquires the lock, blocking until it is free or ctx is done.
//
// It returns nil when acquired; ErrOwnerDead when acquired from an owner that
// died (the caller holds the lock and must repair, Consistent, Unlock);
// ErrNotRecoverable; or ctx.Err() if ctx ended first (not held). A free lock
// is taken even if ctx is already done.
//
// A blocked Lock spins briefly, then sleeps in FUTEX_WAIT in slices of at most
// 10 ms, re-checking ctx and the owner's liveness after each, so cancellation
// and owner death are noticed within about 10 ms and an idle waiter uses no
// CPU. Each blocked Lock occupies an OS thread while it sleeps.
func (m *Mutex) Lock(ctx context.Context) error {
	return m.w.lock(ctx)
}

// TryLock acquires the lock if it is free, without blocking. It returns
// (true, nil) if acquired, (true, ErrOwnerDead) if acquired from an owner that
// died, (false, nil) if another live process holds it, and
// (false, ErrNotRecoverable).
func (m *Mutex) TryLock() (bool, error) {
	return m.w.tryLock(true)
}

// Unlock releases the lock, waking one waiter. It returns ErrNotOwner if this
// process does not hold it. If the lock was acquired with ErrOwnerDead and
// Consistent was not called, Unlock releases it into the not-recoverable state
// and returns ErrNotRecoverable.
func (m *Mutex) Unlock() error {
	return m.w.unlock(false)
}

// Consistent marks the state protected by a lock acquired with ErrOwnerDead
// as repaired, so that Unlock releases it normally. It is a no-op on a lock
// held normally and returns ErrNotOwner if this process does not hold it.
func (m *Mutex) Consistent() error {
	return m.w.consistent()
}
