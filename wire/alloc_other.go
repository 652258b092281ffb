//go:build !linux

package wire

// adviseHuge does nothing where madvise(MADV_HUGEPAGE) does not exist.
func adviseHuge(b []byte) {}
