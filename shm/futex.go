//go:build linux

package shm

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Shared (not _PRIVATE) futex operations: the words live in memory mapped by
// several processes, so the kernel must key waiters by the physical page.
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

const wakeAll = 1<<31 - 1

// futexWait sleeps while *addr == val, at most d (d < 0: no limit). It
// returns nil when woken, unix.EAGAIN if *addr != val on entry,
// unix.ETIMEDOUT or unix.EINTR. Callers always re-check their condition.
func futexWait(addr *uint32, val uint32, d time.Duration) error {
	var tsp *unix.Timespec
	if d >= 0 {
		ts := unix.NsecToTimespec(int64(d))
		tsp = &ts
	}
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp,
		uintptr(val), uintptr(unsafe.Pointer(tsp)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// futexWake wakes up to n processes sleeping on addr.
func futexWake(addr *uint32, n int) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(n), 0, 0, 0)
}
