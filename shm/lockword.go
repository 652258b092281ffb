//go:build linux

package shm

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// Robust lock word (see LAYOUT.md, "Lock word"). One uint64, updated only with
// 64-bit compare-and-swap:
//
//	bits  0..29  owner PID; 0 = unlocked; pidNotRecoverable; pidAbandoned
//	bit  30      flagDied: owner took the lock from a dead owner and has not
//	             called Consistent yet
//	bit  31      flagWaiters: someone may be sleeping in FUTEX_WAIT on the word
//	bits 32..63  owner tag (low 32 bits of its start time; 0 = unknown)
//
// FUTEX_WAIT and FUTEX_WAKE operate on the low 32 bits (bits 0..31), which on
// a little-endian machine are the 4 bytes at the word's own address.
const (
	pidMask           = 1<<30 - 1
	flagDied          = 1 << 30
	flagWaiters       = 1 << 31
	pidNotRecoverable = pidMask     // word value: lock is unusable until Init
	pidAbandoned      = pidMask - 1 // unlocked, but state inconsistent (RWMutex)
)

// Timing of blocked waiters. A waiter never sleeps longer than the current
// slice: the first sleep lasts minSlice, each next one twice as long, up to
// maxSlice. After each slice it re-checks its context and whether the owner is
// still alive, so a dead owner is noticed at most maxSlice (plus the time the
// kernel takes to finish killing it) after it dies, and a cancelled context at
// most maxSlice after cancellation. A deadline is honoured exactly: the last
// slice ends at the deadline.
const (
	minSlice = 1 * time.Millisecond
	maxSlice = 10 * time.Millisecond
	spinIter = 20
)

// myWord returns the owner value for this process (pid | tag<<32).
func myWord() uint64 {
	pid, tag, _ := selfID()
	return uint64(pid) | uint64(tag)<<32
}

func ownerOf(w uint64) (pid, tag uint32) { return uint32(w & pidMask), uint32(w >> 32) }

// lockWord is a robust lock word in shared memory.
type lockWord struct {
	p *uint64
}

// futexAddr is the 32-bit futex word: the low half of the lock word.
func (l lockWord) futexAddr() *uint32 { return lowHalf(l.p) }

func lowHalf(p *uint64) *uint32 {
	if bigEndian {
		return (*uint32)(unsafe.Add(unsafe.Pointer(p), 4))
	}
	return (*uint32)(unsafe.Pointer(p))
}

var bigEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 0
}()

func (l lockWord) held(me uint64, w uint64) bool {
	return w&pidMask == me&pidMask && w>>32 == me>>32
}

// tryLock makes one attempt. It returns (true, nil) on a normal acquire,
// (true, ErrOwnerDead) when it took over from a dead owner, (false, nil) if
// the lock is held by a live process, or (false, ErrNotRecoverable).
func (l lockWord) tryLock(checkOwner bool) (bool, error) {
	me := myWord()
	for {
		old := atomic.LoadUint64(l.p)
		ok, err, retry := l.attempt(old, me, 0, checkOwner)
		if !retry {
			return ok, err
		}
	}
}

// attempt tries to move the word from old to held-by-me. extra is OR-ed into
// the new value (flagWaiters for a waiter that has slept). retry means the
// CAS lost a race and the caller should reload.
func (l lockWord) attempt(old, me, extra uint64, checkOwner bool) (ok bool, err error, retry bool) {
	pid, tag := ownerOf(old)
	switch {
	case pid == 0:
		if atomic.CompareAndSwapUint64(l.p, old, me|extra) {
			return true, nil, false
		}
		return false, nil, true
	case pid == pidNotRecoverable:
		return false, ErrNotRecoverable, false
	case pid == pidAbandoned || (checkOwner && !alive(pid, tag)):
		if atomic.CompareAndSwapUint64(l.p, old, me|flagDied|old&flagWaiters|extra) {
			return true, ErrOwnerDead, false
		}
		return false, nil, true
	}
	return false, nil, false
}

// lock acquires the word, blocking until ctx is done. It returns nil,
// ErrOwnerDead (acquired from a dead owner), ErrNotRecoverable, or ctx's
// error.
func (l lockWord) lock(ctx context.Context) error {
	me := myWord()
	if atomic.CompareAndSwapUint64(l.p, 0, me) {
		return nil
	}
	return l.lockSlow(ctx, me)
}

func (l lockWord) lockSlow(ctx context.Context, me uint64) error {
	var extra uint64 // flagWaiters once we have slept: others may still sleep
	var watch ownerWatch
	watch.start()
	for i := 0; ; i++ {
		old := atomic.LoadUint64(l.p)
		check := watch.due(old)
		if ok, err, retry := l.attempt(old, me, extra, check); ok || err != nil {
			return err
		} else if retry {
			continue
		}
		if i < spinIter {
			runtime.Gosched()
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if old&flagWaiters == 0 {
			if !atomic.CompareAndSwapUint64(l.p, old, old|flagWaiters) {
				continue
			}
			old |= flagWaiters
		}
		d, err := sliceFor(ctx, watch.slice)
		if err != nil {
			return err
		}
		futexWait(l.futexAddr(), uint32(old), d)
		extra = flagWaiters
	}
}

// ownerWatch decides when a waiter should check whether the owner in a lock
// word is still alive: once the same owner has held the word for a whole
// slice while we waited (reading /proc costs microseconds, so not on every
// wake). The slice doubles after each check, from minSlice up to maxSlice.
type ownerWatch struct {
	slice     time.Duration
	lastCheck time.Time
	lastOwner uint64
}

func (o *ownerWatch) start() {
	o.slice = minSlice
	o.lastCheck = time.Now()
}

// due reports whether to check the owner of word w now.
func (o *ownerWatch) due(w uint64) bool {
	owner := w &^ flagWaiters
	now := time.Now()
	if owner != o.lastOwner {
		o.lastOwner, o.lastCheck = owner, now
		return false
	}
	if now.Sub(o.lastCheck) < o.slice {
		return false
	}
	o.lastCheck = now
	o.tick()
	return true
}

// tick lengthens the slice after a check.
func (o *ownerWatch) tick() {
	if o.slice < maxSlice {
		o.slice = min(2*o.slice, maxSlice)
	}
}

// sliceFor returns how long to sleep: slice, cut short by ctx's deadline.
func sliceFor(ctx context.Context, slice time.Duration) (time.Duration, error) {
	if dl, ok := ctx.Deadline(); ok {
		rem := time.Until(dl)
		if rem <= 0 {
			return 0, context.DeadlineExceeded
		}
		if rem < slice {
			return rem, nil
		}
	}
	return slice, nil
}

// unlock releases the word. With flagDied still set (Consistent never
// called) the word becomes not recoverable and ErrNotRecoverable is returned.
// all selects waking every sleeper rather than one.
func (l lockWord) unlock(all bool) error {
	me := myWord()
	for {
		old := atomic.LoadUint64(l.p)
		if !l.held(me, old) {
			if old&pidMask == pidNotRecoverable {
				return ErrNotRecoverable
			}
			return ErrNotOwner
		}
		var nw uint64
		if old&flagDied != 0 {
			nw = pidNotRecoverable
		}
		if !atomic.CompareAndSwapUint64(l.p, old, nw) {
			continue
		}
		if nw != 0 {
			futexWake(l.futexAddr(), wakeAll)
			return ErrNotRecoverable
		}
		if old&flagWaiters != 0 {
			n := 1
			if all {
				n = wakeAll
			}
			futexWake(l.futexAddr(), n)
		}
		return nil
	}
}

// abandon releases a word that this process took over from a dead owner but
// cannot finish acquiring (RWMutex.Lock cancelled while draining readers): the
// next locker gets ErrOwnerDead again.
func (l lockWord) abandon() {
	me := myWord()
	for {
		old := atomic.LoadUint64(l.p)
		if !l.held(me, old) {
			return
		}
		if atomic.CompareAndSwapUint64(l.p, old, pidAbandoned|flagDied) {
			futexWake(l.futexAddr(), wakeAll)
			return
		}
	}
}

// consistent clears flagDied on a word held by this process.
func (l lockWord) consistent() error {
	me := myWord()
	for {
		old := atomic.LoadUint64(l.p)
		if !l.held(me, old) {
			if old&pidMask == pidNotRecoverable {
				return ErrNotRecoverable
			}
			return ErrNotOwner
		}
		if old&flagDied == 0 || atomic.CompareAndSwapUint64(l.p, old, old&^flagDied) {
			return nil
		}
	}
}
