package wire

import (
	"strings"
	"unsafe"
)

// Alloc returns a new byte slice of length n whose bytes are not zeroed:
// the caller must write each byte before it reads it or hands it out. It is
// for buffers that are filled at once (chunks that reads land in, copies of
// messages): make zeroes the whole buffer first, and for a large one that
// cost as much as the copy (BENCHMARKS.md). The memory is an ordinary Go
// heap object, freed by the collector like any other; strings.Builder's
// Grow is the one public way to allocate without zeroing.
func Alloc(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	if n >= hugeMin {
		return allocHuge(n)
	}
	return alloc(n)
}

// alloc is Alloc's allocation: n bytes or a little more, not zeroed.
func alloc(n int) []byte {
	var b strings.Builder
	b.Grow(n)
	b.WriteByte(0) // so that String shares b's buffer, whose start it gives
	return unsafe.Slice(unsafe.StringData(b.String()), b.Cap())[:n:n]
}
