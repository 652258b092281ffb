//go:build !linux

package wire

// hugeMin is above any size: no buffer starts on a huge page here.
const hugeMin = int(^uint(0) >> 1)

// allocHuge is not used where huge pages are not asked for.
func allocHuge(n int) []byte { return alloc(n) }
