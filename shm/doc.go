// Package shm provides named shared-memory regions and robust cross-process
// locks that live inside them, with no daemon. It is Linux-only.
//
// # Regions
//
// A Region is a file in a per-user directory (default /dev/shm/loft-<uid>,
// see Options) mapped into every process that opens it by name. Create makes
// one, Open maps an existing one, Remove deletes the name. Files are created
// with mode 0600, and a directory or file that belongs to another user or is
// open to group or others is refused (errors.Is(err, fs.ErrPermission)). Each
// file starts with a 128-byte header (magic, layout version, sizes, creator
// PID) that Open validates before mapping, so a truncated or foreign file
// yields ErrCorrupt or ErrVersion instead of a crash. Bytes returns the user
// area after the header; it starts zeroed.
//
// # Objects in a region
//
// Everything else is a small handle onto bytes of the user area, placed by
// the caller at an 8-byte-aligned offset; every process must use the same
// offsets. Zeroed memory is a valid initial state for all of them, so a fresh
// region needs no set-up except a Semaphore's count.
//
//   - Mutex: a robust lock owned by a process (MutexSize bytes).
//   - RWMutex: a robust reader/writer lock, writer-preferring (RWMutexSize).
//   - Semaphore: a counting semaphore that takes back permits of dead
//     holders (SemaphoreSize).
//   - Event: a sequence number to wait on, for "wake me when it changes"
//     (EventSize).
//   - Counter: an atomic int64 (CounterSize).
//   - Seqlock[T]: a pointer-free value T that readers snapshot without
//     blocking the writer (SeqlockSize[T]()).
//
// Blocking calls take a context. They spin briefly, then sleep in the kernel
// (futex) in slices of at most 10 ms, checking the context and whether the
// lock's owner is still alive between slices, so a waiter costs no CPU and
// notices cancellation or a dead owner within about 10 ms.
//
// # When a lock holder dies
//
// Lock words record the owner's PID and start time. If the owner dies (even
// by SIGKILL) the next Lock takes the lock over and returns ErrOwnerDead: the
// caller holds the lock, must repair the shared state, call Consistent, then
// Unlock. Unlocking without Consistent makes the lock return
// ErrNotRecoverable forever (until Init), as with robust pthread mutexes. Do
// not treat ErrOwnerDead as "not acquired":
//
//	switch err := mu.Lock(ctx); {
//	case errors.Is(err, shm.ErrOwnerDead):
//		repair(r.Bytes())
//		mu.Consistent()
//	case err != nil:
//		return err
//	}
//	defer mu.Unlock()
//
// # Example
//
// Two processes sharing a counter guarded by a Mutex; the second one runs the
// same code with Open instead of Create:
//
//	r, err := shm.Create("jobs", 4096, nil) // or shm.Open("jobs", nil)
//	if err != nil {
//		return err
//	}
//	defer r.Close()
//	mu, _ := shm.NewMutex(r, 0)     // bytes 0..7
//	done, _ := shm.NewCounter(r, 8) // bytes 8..15
//	if err := mu.Lock(ctx); err != nil && !errors.Is(err, shm.ErrOwnerDead) {
//		return err
//	}
//	mu.Consistent() // nothing to repair in this example
//	done.Add(1)
//	mu.Unlock()
//
// LAYOUT.md next to this file describes every shared structure byte by byte,
// so that a C or Rust program can join a region.
package shm
