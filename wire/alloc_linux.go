package wire

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePage is the size of a transparent huge page on the platforms loft
// runs on (x86-64 and arm64 with 4 KiB base pages).
const hugePage = 2 << 20

// hugeMin is the size from which Alloc's buffers start on a huge page.
const hugeMin = 2 * hugePage

// allocHuge returns n bytes, not zeroed, starting on a 2 MiB boundary and
// advised for huge pages, so that every 2 MiB of it but the last can be
// one huge page (a buffer placed anywhere in the heap had whole huge pages
// only in its interior: half of a 4 MiB one). It allocates up to 2 MiB
// more than n and returns the part after the boundary; the part before is
// never touched, so it costs address space and the collector's count, not
// memory. The whole allocation lives as long as the returned slice.
func allocHuge(n int) []byte {
	b := alloc(n + hugePage)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	off := int((hugePage - p%hugePage) % hugePage)
	buf := b[off : off+n : off+n]
	adviseHuge(buf)
	return buf
}

// adviseHuge asks the kernel to back the whole 2 MiB pages inside b with
// transparent huge pages (madvise MADV_HUGEPAGE; it matters where the
// system's policy is "madvise", the common default). A read chunk is
// written once from start to end: with 4 KiB pages its first touch took a
// page fault per 4 KiB, and on a virtual machine a fault costs
// microseconds (BENCHMARKS.md: they were a sixth of a shared-memory
// receiver's CPU). The advice only changes how the kernel backs the
// range: the memory stays an ordinary Go heap object. Errors are ignored
// (a kernel without THP keeps small pages).
func adviseHuge(b []byte) {
	if cap(b) < 2*hugePage {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	b = b[:cap(b)]
	start := int((hugePage - p%hugePage) % hugePage)
	end := start + (len(b)-start)&^(hugePage-1)
	if end <= start {
		return
	}
	_ = unix.Madvise(b[start:end], unix.MADV_HUGEPAGE)
}
