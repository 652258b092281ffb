package shm

import "errors"

// Sentinel errors. Every error returned by this package that has one of these
// meanings wraps the sentinel, so callers match with errors.Is. Errors about
// permissions wrap fs.ErrPermission, a missing region wraps fs.ErrNotExist, an
// existing one wraps fs.ErrExist, and use after Close wraps fs.ErrClosed.
var (
	// ErrCorrupt means a region file does not hold a valid loft header: wrong
	// magic, impossible sizes, or a file shorter than its header says. The file
	// was not mapped; remove it (Remove) and create it again.
	ErrCorrupt = errors.New("shm: region file corrupt")

	// ErrVersion means the region was created with a header layout version
	// this package does not understand. Upgrade the older peer, or remove the
	// region and create it again.
	ErrVersion = errors.New("shm: unsupported region layout version")

	// ErrName means a region name is empty, too long, starts with '.', or
	// contains '/' or NUL.
	ErrName = errors.New("shm: invalid region name")

	// ErrSize means a requested region size is not positive or is larger than
	// MaxSize, or OpenOrCreate found an existing region of another size.
	ErrSize = errors.New("shm: invalid region size")

	// ErrOffset means an object was placed at an offset that is negative, not
	// 8-byte aligned, or runs past the end of the region's user area.
	ErrOffset = errors.New("shm: offset not 8-byte aligned or out of range")

	// ErrOwnerDead is returned by Lock and TryLock (and by RWMutex.Lock) when the
	// previous owner died while holding the lock. The caller HOLDS the lock: it
	// must repair the protected state, call Consistent, then Unlock. Unlocking
	// without Consistent makes the lock permanently unusable (ErrNotRecoverable).
	// Like EOWNERDEAD for robust pthread mutexes.
	ErrOwnerDead = errors.New("shm: previous lock owner died; lock acquired, repair state then call Consistent")

	// ErrNotRecoverable means a lock was unlocked after its owner died without
	// the state being marked consistent. Every later locker gets this error
	// until Init is called while no process uses the lock. Like
	// ENOTRECOVERABLE for robust pthread mutexes.
	ErrNotRecoverable = errors.New("shm: lock not recoverable: a holder died and the state was never marked consistent; Init it again")

	// ErrWriterDead is returned by RWMutex.RLock when the writer died while
	// holding the write lock. The reader holds nothing: call Lock, which
	// returns ErrOwnerDead, repair, call Consistent, Unlock, then RLock again.
	ErrWriterDead = errors.New("shm: writer died holding the lock; take the write lock (Lock) to repair the state")

	// ErrNotOwner means Unlock, RUnlock, Consistent or Release was called by a
	// process that does not hold the lock.
	ErrNotOwner = errors.New("shm: lock not held by this process")

	// ErrType means Seqlock was instantiated with a type that contains
	// pointers (or strings, slices, maps, channels, funcs, interfaces,
	// uintptr): such values mean nothing in another process.
	ErrType = errors.New("shm: type not allowed in shared memory")

	// ErrInvalid means an argument is out of range (for example a negative
	// semaphore count).
	ErrInvalid = errors.New("shm: invalid argument")
)
