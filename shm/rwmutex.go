//go:build linux

package shm

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// RWMutexSize is the number of bytes an RWMutex occupies in a region.
const RWMutexSize = 256

// MaxReaderSlots is how many reader slots an RWMutex has: each process that
// holds read locks uses at least one slot (one per 1023 concurrent read
// locks). When all slots are taken, RLock waits for one to free up.
const MaxReaderSlots = holderSlots

// RWMutex is a robust reader/writer lock living in shared memory, owned by
// processes like Mutex. Writers are preferred: once a writer is waiting, new
// readers wait behind it. Zeroed memory is a valid unlocked RWMutex.
//
// Robustness:
//   - A writer that dies holding the write lock is handled like a Mutex
//     owner: the next Lock acquires it and returns ErrOwnerDead, and must
//     call Consistent before Unlock (else ErrNotRecoverable). While the write
//     lock belongs to a dead process, RLock returns ErrWriterDead without
//     holding anything: readers cannot repair state, so one of them (or a
//     writer) must take the write lock to do it.
//   - Read locks are recorded per process in a table of MaxReaderSlots slots.
//     Read locks of a process that dies are dropped by the next writer
//     waiting for readers to leave (within about 10 ms); readers do not
//     modify the state, so no repair is needed and Lock returns nil.
//
// An RWMutex value is a handle; it is safe for concurrent use by multiple
// goroutines and processes. As with sync.RWMutex, a goroutine holding a read
// lock must not call Lock, and read locks are not reentrant in the presence
// of a waiting writer.
type RWMutex struct {
	w       lockWord
	wseq    *uint32 // bumped when a reader leaves while someone waits
	wwait   *uint32 // number of processes sleeping on wseq
	readers holders
}

// NewRWMutex returns a handle to the RWMutex at user-area offset off of r; off
// must be 8-byte aligned and off+RWMutexSize must fit in the region.
func NewRWMutex(r *Region, off int) (*RWMutex, error) {
	p, err := r.at(off, RWMutexSize, "NewRWMutex")
	if err != nil {
		return nil, err
	}
	if _, _, err := selfID(); err != nil {
		return nil, err
	}
	return &RWMutex{
		w:       lockWord{p: (*uint64)(p)},
		wseq:    (*uint32)(unsafe.Add(p, 8)),
		wwait:   (*uint32)(unsafe.Add(p, 12)),
		readers: newHolders(unsafe.Add(p, 16)),
	}, nil
}

// Init stores the unlocked state with no readers. Zeroed memory already is
// unlocked; Init is only needed to bring a lock back from ErrNotRecoverable,
// and must only be called while no process uses the lock.
func (rw *RWMutex) Init() {
	atomic.StoreUint64(rw.w.p, 0)
	atomic.StoreUint32(rw.wseq, 0)
	atomic.StoreUint32(rw.wwait, 0)
	rw.readers.clear()
}

// RLock acquires a read lock, blocking while a writer holds or waits for the
// lock, until ctx is done. It returns nil when acquired, ErrWriterDead if the
// write lock belongs to a process that died (nothing is held; see RWMutex),
// ErrNotRecoverable, or ctx.Err().
func (rw *RWMutex) RLock(ctx context.Context) error {
	var watch ownerWatch
	watch.start()
	for i := 0; ; i++ {
		w := atomic.LoadUint64(rw.w.p)
		pid, tag := ownerOf(w)
		if pid == 0 {
			if rw.readers.add(1) == 0 {
				if atomic.LoadUint64(rw.w.p)&pidMask == 0 {
					return nil
				}
				// A writer came in between: let it go first.
				rw.readers.remove(1)
				rw.readerLeft()
				continue
			}
			// Reader table full: drop dead processes' slots now and then,
			// otherwise wait for a reader to leave.
			if watch.due(rw.progress()) && rw.readers.reclaim() > 0 {
				continue
			}
			if err := rw.sleepOnSeq(ctx, watch.slice, func() bool { return false }); err != nil {
				return err
			}
			continue
		}
		switch {
		case pid == pidNotRecoverable:
			return ErrNotRecoverable
		case pid == pidAbandoned:
			return ErrWriterDead
		case watch.due(w) && !alive(pid, tag):
			return ErrWriterDead
		}
		if i < spinIter {
			runtime.Gosched()
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if w&flagWaiters == 0 {
			if !atomic.CompareAndSwapUint64(rw.w.p, w, w|flagWaiters) {
				continue
			}
			w |= flagWaiters
		}
		d, err := sliceFor(ctx, watch.slice)
		if err != nil {
			return err
		}
		futexWait(rw.w.futexAddr(), uint32(w), d)
	}
}

// RUnlock releases one read lock held by this process. It returns ErrNotOwner
// if this process holds none.
func (rw *RWMutex) RUnlock() error {
	if rw.readers.remove(1) == 0 {
		return ErrNotOwner
	}
	rw.readerLeft()
	return nil
}

// readerLeft tells a writer draining readers (or a reader waiting for a slot)
// that a reader left.
func (rw *RWMutex) readerLeft() {
	if atomic.LoadUint64(rw.w.p)&pidMask != 0 || atomic.LoadUint32(rw.wwait) != 0 {
		atomic.AddUint32(rw.wseq, 1)
		if atomic.LoadUint32(rw.wwait) != 0 {
			futexWake(rw.wseq, wakeAll)
		}
	}
}

// progress is a value that changes whenever a reader leaves while someone
// waits. Dead readers are looked for only once it has stayed the same for a
// while (reading /proc for every slot costs microseconds).
func (rw *RWMutex) progress() uint64 { return uint64(atomic.LoadUint32(rw.wseq)) | 1<<32 }

// sleepOnSeq sleeps on wseq for at most slice unless done() becomes true
// first.
func (rw *RWMutex) sleepOnSeq(ctx context.Context, slice time.Duration, done func() bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := sliceFor(ctx, slice)
	if err != nil {
		return err
	}
	atomic.AddUint32(rw.wwait, 1)
	s := atomic.LoadUint32(rw.wseq)
	if !done() {
		futexWait(rw.wseq, s, d)
	}
	atomic.AddUint32(rw.wwait, ^uint32(0))
	return nil
}

// Lock acquires the write lock, blocking until ctx is done: first the writer
// word (like Mutex.Lock, with the same ErrOwnerDead and ErrNotRecoverable
// results), then waiting for readers to leave. If ctx ends while waiting for
// readers, the write lock is released again and ctx.Err() returned.
func (rw *RWMutex) Lock(ctx context.Context) error {
	res := rw.w.lock(ctx)
	if res != nil && res != ErrOwnerDead {
		return res
	}
	var watch ownerWatch
	watch.start()
	for i := 0; ; i++ {
		if rw.readers.empty() {
			return res
		}
		if watch.due(rw.progress()) && rw.readers.reclaim() > 0 {
			continue
		}
		if i < spinIter {
			runtime.Gosched()
			continue
		}
		if err := rw.sleepOnSeq(ctx, watch.slice, rw.readers.empty); err != nil {
			if res == ErrOwnerDead {
				rw.w.abandon()
			} else {
				rw.w.unlock(true)
			}
			return err
		}
	}
}

// TryLock acquires the write lock if no process holds the lock for reading
// or writing, without blocking. Results are as for Mutex.TryLock.
func (rw *RWMutex) TryLock() (bool, error) {
	ok, res := rw.w.tryLock(true)
	if !ok {
		return false, res
	}
	if rw.readers.empty() || (rw.readers.reclaim() > 0 && rw.readers.empty()) {
		return true, res
	}
	if res == ErrOwnerDead {
		rw.w.abandon()
	} else {
		rw.w.unlock(true)
	}
	return false, nil
}

// Unlock releases the write lock and wakes every waiting reader and writer.
// Results are as for Mutex.Unlock.
func (rw *RWMutex) Unlock() error { return rw.w.unlock(true) }

// Consistent marks the state as repaired after Lock returned ErrOwnerDead;
// see Mutex.Consistent.
func (rw *RWMutex) Consistent() error { return rw.w.consistent() }
