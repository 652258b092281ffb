//go:build linux

package shm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Region is a named shared-memory region mapped into this process. Its user
// area (Bytes) is shared with every process that maps the same name.
//
// A Region's methods are safe for concurrent use, except that Close must not
// run concurrently with any use of Bytes or of objects placed in the region:
// Close unmaps the memory, and a later access faults.
type Region struct {
	name   string
	path   string
	mem    []byte // the whole mapping: header + user area
	user   []byte
	hdr    header
	closed atomic.Bool
}

// Create creates a region called name with a user area of size bytes
// (zero-filled), maps it and returns it. The file is created with mode 0600 in
// the directory described by opts; it fails with an error matching fs.ErrExist
// if the name is taken. The file is fully written (header included) under a
// temporary name and then linked into place, so Open never sees a
// half-initialised region. Memory for the whole region is reserved up front
// (fallocate), so a full /dev/shm is reported here rather than by a SIGBUS
// later.
func Create(name string, size int, opts *Options) (*Region, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if size <= 0 || size > MaxSize {
		return nil, fmt.Errorf("shm: create %q: size %d not in 1..%d: %w", name, size, MaxSize, ErrSize)
	}
	pid, _, err := selfID()
	if err != nil {
		return nil, err
	}
	dfd, dir, err := openDir(opts)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)

	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := ".loft-tmp-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("shm: create %q in %s: %w", name, dir, err)
	}
	defer unix.Unlinkat(dfd, tmp, 0)
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, fmt.Errorf("shm: create %q: chmod: %w", name, err)
	}
	total := HeaderSize + size
	if err := unix.Fallocate(fd, 0, 0, int64(total)); err != nil {
		if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
			return nil, fmt.Errorf("shm: create %q: reserve %d bytes in %s: %w", name, total, dir, err)
		}
		if err := unix.Ftruncate(fd, int64(total)); err != nil {
			return nil, fmt.Errorf("shm: create %q: resize to %d bytes: %w", name, total, err)
		}
	}
	mem, err := unix.Mmap(fd, 0, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: create %q: mmap: %w", name, err)
	}
	h := header{
		version:    LayoutVersion,
		headerSize: HeaderSize,
		totalSize:  uint64(total),
		userSize:   uint64(size),
		creatorPID: pid,
		created:    time.Now().UnixNano(),
	}
	putHeader(mem, h)
	if err := publish(dfd, tmp, name); err != nil {
		unix.Munmap(mem)
		if err == unix.EEXIST {
			return nil, fmt.Errorf("shm: create %q in %s: %w", name, dir, fs.ErrExist)
		}
		return nil, fmt.Errorf("shm: create %q in %s: %w", name, dir, err)
	}
	return newRegion(name, filepath.Join(dir, name), mem, h), nil
}

// publish gives the fully written temporary file its final name, failing with
// EEXIST if the name is taken: link(2), or rename with RENAME_NOREPLACE on
// file systems without hard links.
func publish(dfd int, tmp, name string) error {
	err := unix.Linkat(dfd, tmp, dfd, name, 0)
	switch err {
	case unix.EPERM, unix.EOPNOTSUPP, unix.ENOSYS, unix.EMLINK:
		return unix.Renameat2(dfd, tmp, dfd, name, unix.RENAME_NOREPLACE)
	}
	return err
}

// Open maps the existing region called name. It fails with an error matching
// fs.ErrNotExist if there is none, fs.ErrPermission if the file or its
// directory belongs to another user or is open to group or others, and
// ErrCorrupt or ErrVersion if the header is not valid. The file's size is
// checked before mapping, and only the size the header declares is mapped, so
// a truncated or corrupt file is an error, never a crash.
func Open(name string, opts *Options) (*Region, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if _, _, err := selfID(); err != nil {
		return nil, err
	}
	dfd, dir, err := openDir(opts)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	path := filepath.Join(dir, name)
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		switch err {
		case unix.ENOENT:
			return nil, fmt.Errorf("shm: open %q: no region in %s: %w", name, dir, fs.ErrNotExist)
		case unix.ELOOP:
			return nil, permError("open %s: region file is a symbolic link", path)
		}
		return nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: open %s: stat: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("shm: open %s: %w: not a regular file", path, ErrCorrupt)
	}
	if err := checkOwner("file", path, &st); err != nil {
		return nil, err
	}
	var buf [HeaderSize]byte
	n := 0
	if st.Size > 0 {
		n, err = unix.Pread(fd, buf[:], 0)
		if err != nil {
			return nil, fmt.Errorf("shm: open %s: read header: %w", path, err)
		}
	}
	h, err := parseHeader(buf[:n], st.Size)
	if err != nil {
		return nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	mem, err := unix.Mmap(fd, 0, int(h.totalSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: open %s: mmap: %w", path, err)
	}
	return newRegion(name, path, mem, h), nil
}

// OpenOrCreate opens the region called name, or creates it with a user area
// of size bytes if it does not exist; created reports which happened. An
// existing region of another size is an error matching ErrSize. It lets
// symmetric peers start in any order; the one that created the region is the
// one that should Init any objects that need it (a Semaphore count).
func OpenOrCreate(name string, size int, opts *Options) (r *Region, created bool, err error) {
	for range 10 {
		r, err = Create(name, size, opts)
		if err == nil {
			return r, true, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, false, err
		}
		r, err = Open(name, opts)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed between the two calls; try again
		}
		if err != nil {
			return nil, false, err
		}
		if r.Size() != size {
			r.Close()
			return nil, false, fmt.Errorf("shm: region %q exists with size %d, want %d: %w", name, r.Size(), size, ErrSize)
		}
		return r, false, nil
	}
	return nil, false, fmt.Errorf("shm: open or create %q: raced with Remove too many times: %w", name, err)
}

// Remove deletes the region file called name. Processes that have it mapped
// keep using their mapping; the memory is freed when the last one unmaps it.
// A later Create with the same name makes a new, unrelated region.
func Remove(name string, opts *Options) error {
	if err := checkName(name); err != nil {
		return err
	}
	dfd, dir, err := openDir(opts)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, name, 0); err != nil {
		if err == unix.ENOENT {
			return fmt.Errorf("shm: remove %q: no region in %s: %w", name, dir, fs.ErrNotExist)
		}
		return fmt.Errorf("shm: remove %q in %s: %w", name, dir, err)
	}
	return nil
}

func newRegion(name, path string, mem []byte, h header) *Region {
	return &Region{
		name: name,
		path: path,
		mem:  mem,
		user: mem[HeaderSize:h.totalSize:h.totalSize],
		hdr:  h,
	}
}

// Name returns the region's name.
func (r *Region) Name() string { return r.name }

// Path returns the region file's path.
func (r *Region) Path() string { return r.path }

// Size returns the size in bytes of the user area.
func (r *Region) Size() int { return len(r.user) }

// CreatorPID returns the PID of the process that created the region, as
// recorded in its header.
func (r *Region) CreatorPID() int { return int(r.hdr.creatorPID) }

// Bytes returns the user area: the shared memory after loft's header. Its
// length is Size and it stays valid until Close. Offsets given to NewMutex
// and the other constructors are offsets into this slice; it starts on a
// 128-byte boundary.
func (r *Region) Bytes() []byte { return r.user }

// Close unmaps the region. The file stays (see Remove). Using Bytes or any
// object placed in the region after Close is a programming error and faults.
// A second Close returns an error matching fs.ErrClosed.
func (r *Region) Close() error {
	if r.closed.Swap(true) {
		return fmt.Errorf("shm: close %q: %w", r.name, fs.ErrClosed)
	}
	if err := unix.Munmap(r.mem); err != nil {
		return fmt.Errorf("shm: close %q: munmap: %w", r.name, err)
	}
	return nil
}

// at returns a pointer to size bytes at user-area offset off, checking that
// off is 8-byte aligned and the object fits.
func (r *Region) at(off, size int, what string) (unsafe.Pointer, error) {
	if r == nil {
		return nil, fmt.Errorf("shm: %s: nil region: %w", what, ErrInvalid)
	}
	if r.closed.Load() {
		return nil, fmt.Errorf("shm: %s in %q: %w", what, r.name, fs.ErrClosed)
	}
	if off < 0 || off%8 != 0 || size < 0 || off > len(r.user) || size > len(r.user)-off {
		return nil, fmt.Errorf("shm: %s at offset %d (size %d) in region %q of %d bytes: %w", what, off, size, r.name, len(r.user), ErrOffset)
	}
	if size == 0 {
		return unsafe.Pointer(unsafe.SliceData(r.user)), nil
	}
	return unsafe.Pointer(&r.user[off]), nil
}
