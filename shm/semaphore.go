//go:build linux

package shm

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// SemaphoreSize is the number of bytes a Semaphore occupies in a region.
const SemaphoreSize = 256

// MaxSemaphoreCount is the largest number of permits a Semaphore can hold.
const MaxSemaphoreCount = 1<<31 - 1

// Semaphore is a counting semaphore living in shared memory. Zeroed memory is
// a valid Semaphore with no permits; the creator sets the initial count with
// Init before other processes use it.
//
// Robustness: permits taken by Acquire are recorded per process in a table of
// holder slots (the same scheme as RWMutex readers). When a process dies
// holding permits, they are returned to the semaphore by the next Acquire that
// has to wait (within about 10 ms of it starting to wait), or by Reclaim.
// Limits of this scheme, by design:
//   - Release returns the caller's own recorded permits first; permits
//     released by a process that never acquired them (a producer signalling a
//     consumer) are simply added. A consumer that acquired such permits and
//     dies gets them counted back, which suits a resource limiter (the
//     intended use) but not a work queue: use Event or a queue for that.
//   - A process dying in the few instructions between taking permits and
//     recording them (or between un-recording and adding them back in
//     Release) loses them.
//   - If all slots are taken, further permits are taken without being
//     recorded and are not recovered if their holder dies.
//
// A Semaphore value is a handle; it is safe for concurrent use by multiple
// goroutines and processes.
type Semaphore struct {
	count   *uint32 // futex word: permits available
	waiters *uint32 // number of processes sleeping in Acquire
	holders holders
}

// NewSemaphore returns a handle to the Semaphore at user-area offset off of r;
// off must be 8-byte aligned and off+SemaphoreSize must fit in the region.
func NewSemaphore(r *Region, off int) (*Semaphore, error) {
	p, err := r.at(off, SemaphoreSize, "NewSemaphore")
	if err != nil {
		return nil, err
	}
	if _, _, err := selfID(); err != nil {
		return nil, err
	}
	return &Semaphore{
		count:   (*uint32)(p),
		waiters: (*uint32)(unsafe.Add(p, 4)),
		holders: newHolders(unsafe.Add(p, 16)),
	}, nil
}

// Init sets the number of available permits and forgets all holders. Call it
// once, from the process that created the region, before other processes use
// the semaphore.
func (s *Semaphore) Init(count int) error {
	if count < 0 || count > MaxSemaphoreCount {
		return fmt.Errorf("shm: Semaphore.Init(%d): count not in 0..%d: %w", count, MaxSemaphoreCount, ErrInvalid)
	}
	s.holders.clear()
	atomic.StoreUint32(s.waiters, 0)
	atomic.StoreUint32(s.count, uint32(count))
	return nil
}

// Count returns the number of permits available now.
func (s *Semaphore) Count() int { return int(atomic.LoadUint32(s.count)) }

// TryAcquire takes n permits if that many are available, without blocking.
func (s *Semaphore) TryAcquire(n int) bool {
	if n <= 0 || n > MaxSemaphoreCount {
		return false
	}
	for {
		c := atomic.LoadUint32(s.count)
		if c < uint32(n) {
			return false
		}
		if atomic.CompareAndSwapUint32(s.count, c, c-uint32(n)) {
			s.holders.add(uint32(n))
			return true
		}
	}
}

// Acquire takes n permits, blocking until they are available or ctx is done
// (then it returns ctx.Err() and takes nothing). A waiter sleeps in FUTEX_WAIT
// in slices of at most 10 ms, and between slices returns the permits of dead
// holders to the semaphore. Permits are not granted in FIFO order: a large
// request can starve behind a stream of small ones.
func (s *Semaphore) Acquire(ctx context.Context, n int) error {
	if n <= 0 || n > MaxSemaphoreCount {
		return fmt.Errorf("shm: Semaphore.Acquire(%d): n not in 1..%d: %w", n, MaxSemaphoreCount, ErrInvalid)
	}
	want := uint32(n)
	var watch ownerWatch
	watch.start()
	for i := 0; ; i++ {
		c := atomic.LoadUint32(s.count)
		if c >= want {
			if atomic.CompareAndSwapUint32(s.count, c, c-want) {
				s.holders.add(want)
				return nil
			}
			continue
		}
		// Look for dead holders once the count has not moved for a while.
		if watch.due(uint64(c)|1<<32) && s.Reclaim() > 0 {
			continue
		}
		if i < spinIter {
			runtime.Gosched()
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		d, err := sliceFor(ctx, watch.slice)
		if err != nil {
			return err
		}
		atomic.AddUint32(s.waiters, 1)
		if c = atomic.LoadUint32(s.count); c < want {
			futexWait(s.count, c, d)
		}
		atomic.AddUint32(s.waiters, ^uint32(0))
	}
}

// Release returns n permits to the semaphore and wakes waiters. It fails with
// ErrInvalid if the count would exceed MaxSemaphoreCount.
func (s *Semaphore) Release(n int) error {
	if n <= 0 || n > MaxSemaphoreCount {
		return fmt.Errorf("shm: Semaphore.Release(%d): n not in 1..%d: %w", n, MaxSemaphoreCount, ErrInvalid)
	}
	// Un-record first: dying between the two steps loses permits rather than
	// counting them twice.
	removed := s.holders.remove(uint32(n))
	for {
		c := atomic.LoadUint32(s.count)
		if uint64(c)+uint64(n) > MaxSemaphoreCount {
			s.holders.add(removed)
			return fmt.Errorf("shm: Semaphore.Release(%d): count %d would exceed %d: %w", n, c, MaxSemaphoreCount, ErrInvalid)
		}
		if atomic.CompareAndSwapUint32(s.count, c, c+uint32(n)) {
			break
		}
	}
	s.wake()
	return nil
}

func (s *Semaphore) wake() {
	if atomic.LoadUint32(s.waiters) != 0 {
		futexWake(s.count, wakeAll)
	}
}

// Reclaim returns to the semaphore the permits recorded for processes that
// are no longer alive, and reports how many. Blocked Acquire calls do this
// by themselves; Reclaim is for callers that only use TryAcquire.
func (s *Semaphore) Reclaim() int {
	n := s.holders.reclaim()
	if n == 0 {
		return 0
	}
	for {
		c := atomic.LoadUint32(s.count)
		nc := min(uint64(c)+n, MaxSemaphoreCount)
		if atomic.CompareAndSwapUint32(s.count, c, uint32(nc)) {
			break
		}
	}
	s.wake()
	return int(n)
}
