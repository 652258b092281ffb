//go:build linux

package shm

import (
	"sync/atomic"
	"unsafe"
)

// Holder table: a fixed array of uint64 slots in shared memory recording which
// processes hold read locks (RWMutex) or permits (Semaphore), so that holds of
// a process that dies can be taken back. Slot encoding (see LAYOUT.md):
//
//	bits  0..21  PID (0 = free slot)
//	bits 22..31  count of holds recorded in this slot (1..1023)
//	bits 32..63  tag of the process (as in the lock word)
//
// A slot is updated only by 64-bit compare-and-swap, and freed (set to 0)
// when its count drops to 0. A process may own several slots.
const (
	slotPIDMask    = 1<<22 - 1
	slotCountShift = 22
	slotCountMax   = 1<<10 - 1
	holderSlots    = 30
)

type holders struct {
	s []uint64
}

func newHolders(p unsafe.Pointer) holders {
	return holders{s: unsafe.Slice((*uint64)(p), holderSlots)}
}

func slotCount(v uint64) uint32 { return uint32(v>>slotCountShift) & slotCountMax }

func slotOwner(v uint64) (pid, tag uint32) { return uint32(v & slotPIDMask), uint32(v >> 32) }

func mySlotID() uint64 {
	pid, tag, _ := selfID()
	return uint64(pid) | uint64(tag)<<32
}

func isMine(v, me uint64) bool { return v != 0 && v&slotPIDMask == me&slotPIDMask && v>>32 == me>>32 }

// add records n holds for this process and returns how many it could not
// record because the table is full.
func (h holders) add(n uint32) uint32 {
	me := mySlotID()
	for n > 0 {
		free := -1
		done := false
		for i := range h.s {
			v := atomic.LoadUint64(&h.s[i])
			if v == 0 {
				if free < 0 {
					free = i
				}
				continue
			}
			if !isMine(v, me) || slotCount(v) == slotCountMax {
				continue
			}
			k := min(n, slotCountMax-slotCount(v))
			if atomic.CompareAndSwapUint64(&h.s[i], v, v+uint64(k)<<slotCountShift) {
				n -= k
			}
			done = true
			break
		}
		if done {
			continue
		}
		if free < 0 {
			return n
		}
		k := min(n, slotCountMax)
		if atomic.CompareAndSwapUint64(&h.s[free], 0, me|uint64(k)<<slotCountShift) {
			n -= k
		}
	}
	return 0
}

// remove takes away up to n holds of this process and returns how many it
// removed.
func (h holders) remove(n uint32) uint32 {
	me := mySlotID()
	var removed uint32
	for i := 0; i < len(h.s) && removed < n; {
		v := atomic.LoadUint64(&h.s[i])
		if !isMine(v, me) {
			i++
			continue
		}
		c := slotCount(v)
		k := min(c, n-removed)
		nv := v - uint64(k)<<slotCountShift
		if k == c {
			nv = 0
		}
		if atomic.CompareAndSwapUint64(&h.s[i], v, nv) {
			removed += k
			i++
		}
	}
	return removed
}

// reclaim frees the slots of processes that are no longer alive and returns
// the total count they held.
func (h holders) reclaim() uint64 {
	var total uint64
	for i := range h.s {
		v := atomic.LoadUint64(&h.s[i])
		if v == 0 {
			continue
		}
		if pid, tag := slotOwner(v); alive(pid, tag) {
			continue
		}
		if atomic.CompareAndSwapUint64(&h.s[i], v, 0) {
			total += uint64(slotCount(v))
		}
	}
	return total
}

// empty reports whether no slot is in use.
func (h holders) empty() bool {
	for i := range h.s {
		if atomic.LoadUint64(&h.s[i]) != 0 {
			return false
		}
	}
	return true
}

func (h holders) clear() {
	for i := range h.s {
		atomic.StoreUint64(&h.s[i], 0)
	}
}
