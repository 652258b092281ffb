package shm

import (
	"encoding/binary"
	"fmt"
)

// Region header, version 1. See LAYOUT.md. All integers are in the host's
// native byte order (little-endian on amd64 and arm64).
const (
	// Magic is the 8-byte value at offset 0 of every region file.
	Magic = "LOFTSHM\x00"
	// LayoutVersion is the header layout version written by Create and the
	// only one Open accepts.
	LayoutVersion = 1
	// HeaderSize is the size in bytes of the header at the start of a region
	// file; the user area (Region.Bytes) starts right after it.
	HeaderSize = 128
	// MaxSize is the largest user area size Create accepts (1 TiB).
	MaxSize = 1 << 40
)

const (
	hdrMagic      = 0  // [8]byte  Magic
	hdrVersion    = 8  // uint32   LayoutVersion
	hdrHeaderSize = 12 // uint32   HeaderSize
	hdrTotalSize  = 16 // uint64   HeaderSize + user size = bytes mapped
	hdrUserSize   = 24 // uint64   size of the user area
	hdrCreatorPID = 32 // uint32   PID of the creating process
	hdrFlags      = 36 // uint32   0 in version 1
	hdrCreated    = 40 // int64    creation time, Unix nanoseconds
	// 48..127 reserved, zero.
)

// header is the decoded form of a region header.
type header struct {
	version    uint32
	headerSize uint32
	totalSize  uint64
	userSize   uint64
	creatorPID uint32
	flags      uint32
	created    int64
}

func putHeader(b []byte, h header) {
	ne := binary.NativeEndian
	copy(b[hdrMagic:hdrMagic+8], Magic)
	ne.PutUint32(b[hdrVersion:], h.version)
	ne.PutUint32(b[hdrHeaderSize:], h.headerSize)
	ne.PutUint64(b[hdrTotalSize:], h.totalSize)
	ne.PutUint64(b[hdrUserSize:], h.userSize)
	ne.PutUint32(b[hdrCreatorPID:], h.creatorPID)
	ne.PutUint32(b[hdrFlags:], h.flags)
	ne.PutUint64(b[hdrCreated:], uint64(h.created))
}

// parseHeader validates the first bytes b of a region file whose size is
// fileSize. It never reads past len(b) and guarantees on success that
// HeaderSize < totalSize <= fileSize and totalSize fits in an int.
func parseHeader(b []byte, fileSize int64) (header, error) {
	var h header
	if len(b) < 8 || string(b[:8]) != Magic {
		return h, fmt.Errorf("%w: bad magic, not a loft shared-memory region", ErrCorrupt)
	}
	if len(b) < 12 {
		return h, fmt.Errorf("%w: file is %d bytes, too short for a header", ErrCorrupt, len(b))
	}
	ne := binary.NativeEndian
	h.version = ne.Uint32(b[hdrVersion:])
	if h.version != LayoutVersion {
		return h, fmt.Errorf("%w: region has layout version %d, this program understands %d", ErrVersion, h.version, LayoutVersion)
	}
	if len(b) < HeaderSize || fileSize < HeaderSize {
		return h, fmt.Errorf("%w: file is %d bytes, shorter than the %d-byte header", ErrCorrupt, fileSize, HeaderSize)
	}
	h.headerSize = ne.Uint32(b[hdrHeaderSize:])
	h.totalSize = ne.Uint64(b[hdrTotalSize:])
	h.userSize = ne.Uint64(b[hdrUserSize:])
	h.creatorPID = ne.Uint32(b[hdrCreatorPID:])
	h.flags = ne.Uint32(b[hdrFlags:])
	h.created = int64(ne.Uint64(b[hdrCreated:]))
	switch {
	case h.headerSize != HeaderSize:
		return h, fmt.Errorf("%w: header size field is %d, want %d", ErrCorrupt, h.headerSize, HeaderSize)
	case h.userSize == 0 || h.userSize > MaxSize:
		return h, fmt.Errorf("%w: user size %d out of range", ErrCorrupt, h.userSize)
	case h.totalSize != HeaderSize+h.userSize:
		return h, fmt.Errorf("%w: total size %d != header %d + user size %d", ErrCorrupt, h.totalSize, HeaderSize, h.userSize)
	case h.flags != 0:
		return h, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, h.flags)
	case uint64(fileSize) < h.totalSize:
		return h, fmt.Errorf("%w: file is %d bytes but its header says %d (truncated?)", ErrCorrupt, fileSize, h.totalSize)
	}
	return h, nil
}
