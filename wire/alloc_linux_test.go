package wire

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// TestAllocAdvisesHugePages: a large Alloc starts on a 2 MiB boundary, in
// a mapping the kernel marks for huge pages (VmFlags "hg" in smaps).
func TestAllocAdvisesHugePages(t *testing.T) {
	big := Alloc(8<<20 + 100)
	p := uintptr(unsafe.Pointer(&big[0]))
	if p%hugePage != 0 {
		t.Fatalf("an 8 MiB buffer starts at %#x, not on a 2 MiB boundary", p)
	}
	flags, err := vmFlags(p)
	if err != nil {
		t.Skip(err)
	}
	if !strings.Contains(" "+flags+" ", " hg ") {
		t.Fatalf("VmFlags of an 8 MiB chunk: %q, want hg", flags)
	}
	big[0], big[len(big)-1] = 1, 2 // still an ordinary, writable slice
}

// vmFlags returns the VmFlags line of the mapping of /proc/self/smaps
// that holds addr.
func vmFlags(addr uintptr) (string, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 && strings.Contains(line[:strings.IndexByte(line, ' ')], "-") {
			in = addr >= lo && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmFlags:")), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no mapping holds %#x", addr)
}
