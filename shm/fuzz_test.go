//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen writes arbitrary bytes as a region file and opens it. Open must
// either fail with ErrCorrupt or ErrVersion, or return a region whose whole
// user area lies inside the file (touching every page must not SIGBUS).
func FuzzOpen(f *testing.F) {
	valid := validFile(f, 100)
	f.Add(valid)
	f.Add(valid[:HeaderSize])
	f.Add(valid[:50])
	f.Add([]byte{})
	f.Add([]byte(Magic))
	big := append([]byte(nil), valid[:HeaderSize]...)
	binary.NativeEndian.PutUint64(big[hdrUserSize:], 1<<20)
	binary.NativeEndian.PutUint64(big[hdrTotalSize:], HeaderSize+1<<20)
	f.Add(big)
	v2 := append([]byte(nil), valid...)
	binary.NativeEndian.PutUint32(v2[hdrVersion:], 2)
	f.Add(v2)

	dir := privateDir(f)
	opts := &Options{Dir: dir}
	path := filepath.Join(dir, "f")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open("f", opts)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("Open: unexpected error %v", err)
			}
			return
		}
		defer r.Close()
		if HeaderSize+r.Size() > len(data) {
			t.Fatalf("mapped %d bytes of a %d-byte file", HeaderSize+r.Size(), len(data))
		}
		b := r.Bytes()
		var sum byte
		for i := 0; i < len(b); i += 4096 {
			sum += b[i]
		}
		sum += b[len(b)-1]
		_ = sum
	})
}
