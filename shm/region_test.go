//go:build linux

package shm

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestCreateOpenShareBytes(t *testing.T) {
	opts := &Options{Dir: privateDir(t)}
	r, err := Create("share", 1000, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != 1000 || len(r.Bytes()) != 1000 {
		t.Fatalf("Size %d, len(Bytes) %d, want 1000", r.Size(), len(r.Bytes()))
	}
	if r.CreatorPID() != os.Getpid() || r.Name() != "share" || r.Path() != filepath.Join(opts.Dir, "share") {
		t.Fatalf("CreatorPID %d Name %q Path %q", r.CreatorPID(), r.Name(), r.Path())
	}
	fi, err := os.Stat(r.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != HeaderSize+1000 {
		t.Fatalf("file mode %v size %d, want 0600 and %d", fi.Mode(), fi.Size(), HeaderSize+1000)
	}
	copy(r.Bytes(), "hello")
	r.Bytes()[999] = 42

	r2, err := Open("share", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if string(r2.Bytes()[:5]) != "hello" || r2.Bytes()[999] != 42 || r2.Size() != 1000 {
		t.Fatal("second mapping does not see the first one's writes")
	}
	r2.Bytes()[1] = 'a'
	if r.Bytes()[1] != 'a' {
		t.Fatal("first mapping does not see the second one's writes")
	}

	if _, err := Create("share", 10, opts); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create of an existing name: %v, want fs.ErrExist", err)
	}
	if _, err := Open("nope", opts); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a missing name: %v, want fs.ErrNotExist", err)
	}
	entries, _ := os.ReadDir(opts.Dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1 (temporary files left behind?)", len(entries))
	}
	if err := Remove("share", opts); err != nil {
		t.Fatal(err)
	}
	if err := Remove("share", opts); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Remove: %v, want fs.ErrNotExist", err)
	}
	if _, err := Open("share", opts); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Remove: %v, want fs.ErrNotExist", err)
	}
	if r2.Bytes()[999] != 42 {
		t.Fatal("mapping lost after Remove")
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("second Close: %v, want fs.ErrClosed", err)
	}
	if _, err := NewMutex(r2, 0); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("NewMutex on a closed region: %v, want fs.ErrClosed", err)
	}
}

func TestCreateInvalidArguments(t *testing.T) {
	opts := &Options{Dir: privateDir(t)}
	for _, name := range []string{"", ".hidden", "a/b", "a\x00b", strings.Repeat("n", maxNameLen+1)} {
		if _, err := Create(name, 10, opts); !errors.Is(err, ErrName) {
			t.Errorf("Create(%q): %v, want ErrName", name, err)
		}
		if _, err := Open(name, opts); !errors.Is(err, ErrName) {
			t.Errorf("Open(%q): %v, want ErrName", name, err)
		}
	}
	for _, size := range []int{0, -1, MaxSize + 1} {
		if _, err := Create("x", size, opts); !errors.Is(err, ErrSize) {
			t.Errorf("Create size %d: %v, want ErrSize", size, err)
		}
	}
}

func TestOpenOrCreate(t *testing.T) {
	opts := &Options{Dir: privateDir(t)}
	r1, created, err := OpenOrCreate("oc", 64, opts)
	if err != nil || !created {
		t.Fatalf("first OpenOrCreate: created=%v err=%v", created, err)
	}
	defer r1.Close()
	r2, created, err := OpenOrCreate("oc", 64, opts)
	if err != nil || created {
		t.Fatalf("second OpenOrCreate: created=%v err=%v", created, err)
	}
	defer r2.Close()
	if _, _, err := OpenOrCreate("oc", 128, opts); !errors.Is(err, ErrSize) {
		t.Fatalf("OpenOrCreate with another size: %v, want ErrSize", err)
	}
}

func TestDefaultDirectory(t *testing.T) {
	base := privateDir(t)
	t.Setenv("LOFT_RUNTIME_DIR", filepath.Join(base, "run"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(base, "xdg"))
	if got, want := Dir(nil), filepath.Join(base, "run", "shm"); got != want {
		t.Fatalf("Dir with LOFT_RUNTIME_DIR = %q, want %q", got, want)
	}
	r, err := Create("d", 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	fi, err := os.Stat(filepath.Join(base, "run", "shm"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("default directory created with mode %v, want 0700", fi.Mode().Perm())
	}
	if r, err = Open("d", &Options{}); err != nil {
		t.Fatal(err)
	}
	r.Close()

	t.Setenv("LOFT_RUNTIME_DIR", "")
	if got, want := Dir(nil), filepath.Join(base, "xdg", "loft", "shm"); got != want {
		t.Fatalf("Dir with XDG_RUNTIME_DIR = %q, want %q", got, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got, want := Dir(nil), "/dev/shm/loft-"+strconv.Itoa(os.Geteuid()); got != want {
		t.Fatalf("Dir with neither = %q, want %q", got, want)
	}
	if got := Dir(&Options{Dir: "/x"}); got != "/x" {
		t.Fatalf("Dir with Options.Dir = %q", got)
	}
}

func TestDirectoryPermissionsRefused(t *testing.T) {
	good := privateDir(t)
	if r, err := Create("x", 8, &Options{Dir: good}); err != nil {
		t.Fatal(err)
	} else {
		r.Close()
	}
	for _, mode := range []os.FileMode{0o777, 0o750, 0o701, 0o710} {
		if err := os.Chmod(good, mode); err != nil {
			t.Fatal(err)
		}
		opts := &Options{Dir: good}
		if _, err := Create("y", 8, opts); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Create in a directory of mode %v: %v, want fs.ErrPermission", mode, err)
		}
		if _, err := Open("x", opts); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Open in a directory of mode %v: %v, want fs.ErrPermission", mode, err)
		} else {
			t.Logf("mode %v: %v", mode, err)
		}
		if err := Remove("x", opts); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Remove in a directory of mode %v: %v, want fs.ErrPermission", mode, err)
		}
	}
	os.Chmod(good, 0o700)

	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("x", &Options{Dir: link}); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Open through a symlinked directory: %v, want fs.ErrPermission", err)
	}

	t.Run("other-owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown")
		}
		d := privateDir(t)
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Skip(err)
		}
		_, err := Create("x", 8, &Options{Dir: d})
		if !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("Create in a directory of uid 65534: %v, want fs.ErrPermission", err)
		}
		t.Log(err)
	})
}

func TestFilePermissionsRefused(t *testing.T) {
	r, opts := testRegion(t, 8)
	if err := os.Chmod(r.Path(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("r", opts); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Open of a 0644 file: %v, want fs.ErrPermission", err)
	} else {
		t.Log(err)
	}
	os.Chmod(r.Path(), 0o600)

	if err := os.Symlink(r.Path(), filepath.Join(opts.Dir, "sym")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("sym", opts); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Open of a symlink: %v, want fs.ErrPermission", err)
	}

	if os.Geteuid() == 0 {
		if err := os.Chown(r.Path(), 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := Open("r", opts); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Open of a file of uid 65534: %v, want fs.ErrPermission", err)
		}
		os.Chown(r.Path(), 0, 0)
	}
	r2, err := Open("r", opts)
	if err != nil {
		t.Fatalf("Open after restoring permissions: %v", err)
	}
	r2.Close()
}

// validFile returns the bytes of a freshly created region file.
func validFile(t testing.TB, size int) []byte {
	t.Helper()
	r, _ := testRegion(t, size)
	b, err := os.ReadFile(r.Path())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenCorruptFile(t *testing.T) {
	const size = 3 * 4096
	valid := validFile(t, size)
	ne := binary.NativeEndian
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		want   error
	}{
		{"empty", func(b []byte) []byte { return nil }, ErrCorrupt},
		{"shorter than magic", func(b []byte) []byte { return b[:5] }, ErrCorrupt},
		{"shorter than header", func(b []byte) []byte { return b[:HeaderSize-1] }, ErrCorrupt},
		{"header only", func(b []byte) []byte { return b[:HeaderSize] }, ErrCorrupt},
		{"truncated user area", func(b []byte) []byte { return b[:HeaderSize+size/2] }, ErrCorrupt},
		{"one byte short", func(b []byte) []byte { return b[:len(b)-1] }, ErrCorrupt},
		{"bad magic", func(b []byte) []byte { b[0] ^= 0xff; return b }, ErrCorrupt},
		{"magic of another format", func(b []byte) []byte { copy(b, "\x7fELF\x02\x01\x01\x00"); return b }, ErrCorrupt},
		{"version 2", func(b []byte) []byte { ne.PutUint32(b[hdrVersion:], 2); return b }, ErrVersion},
		{"version 0", func(b []byte) []byte { ne.PutUint32(b[hdrVersion:], 0); return b }, ErrVersion},
		{"header size", func(b []byte) []byte { ne.PutUint32(b[hdrHeaderSize:], 64); return b }, ErrCorrupt},
		{"user size 0", func(b []byte) []byte { ne.PutUint64(b[hdrUserSize:], 0); return b }, ErrCorrupt},
		{"total mismatch", func(b []byte) []byte { ne.PutUint64(b[hdrTotalSize:], HeaderSize+size-8); return b }, ErrCorrupt},
		{"sizes past file", func(b []byte) []byte {
			ne.PutUint64(b[hdrUserSize:], 1<<30)
			ne.PutUint64(b[hdrTotalSize:], HeaderSize+1<<30)
			return b
		}, ErrCorrupt},
		{"huge sizes", func(b []byte) []byte {
			ne.PutUint64(b[hdrUserSize:], 1<<63)
			ne.PutUint64(b[hdrTotalSize:], HeaderSize+1<<63)
			return b
		}, ErrCorrupt},
		{"wrapping sizes", func(b []byte) []byte {
			ne.PutUint64(b[hdrUserSize:], ^uint64(0))
			ne.PutUint64(b[hdrTotalSize:], HeaderSize-1)
			return b
		}, ErrCorrupt},
		{"flags", func(b []byte) []byte { ne.PutUint32(b[hdrFlags:], 1); return b }, ErrCorrupt},
	}
	opts := &Options{Dir: privateDir(t)}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(append([]byte(nil), valid...))
			path := filepath.Join(opts.Dir, "c")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := Open("c", opts)
			if err == nil {
				r.Close()
				t.Fatalf("Open succeeded, want %v", c.want)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Open: %v, want %v", err, c.want)
			}
			t.Log(err)
		})
	}
	t.Run("longer file is fine", func(t *testing.T) {
		b := append(append([]byte(nil), valid...), make([]byte, 5000)...)
		path := filepath.Join(opts.Dir, "long")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open("long", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if r.Size() != size {
			t.Fatalf("Size %d, want %d", r.Size(), size)
		}
	})
	t.Run("directory", func(t *testing.T) {
		if err := os.Mkdir(filepath.Join(opts.Dir, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Open("sub", opts); err == nil {
			t.Fatal("Open of a directory succeeded")
		}
	})
}

func TestObjectOffsets(t *testing.T) {
	r, _ := testRegion(t, 1024)
	ctors := map[string]struct {
		size int
		new  func(off int) error
	}{
		"Mutex":     {MutexSize, func(off int) error { _, err := NewMutex(r, off); return err }},
		"RWMutex":   {RWMutexSize, func(off int) error { _, err := NewRWMutex(r, off); return err }},
		"Semaphore": {SemaphoreSize, func(off int) error { _, err := NewSemaphore(r, off); return err }},
		"Event":     {EventSize, func(off int) error { _, err := NewEvent(r, off); return err }},
		"Counter":   {CounterSize, func(off int) error { _, err := NewCounter(r, off); return err }},
		"Seqlock":   {SeqlockSize[seqVal](), func(off int) error { _, err := NewSeqlock[seqVal](r, off); return err }},
	}
	for name, c := range ctors {
		for _, off := range []int{-8, 4, 1, 1024 - c.size + 8, 1024, 1 << 40} {
			if err := c.new(off); !errors.Is(err, ErrOffset) {
				t.Errorf("New%s at %d: %v, want ErrOffset", name, off, err)
			}
		}
		for _, off := range []int{0, 1024 - c.size} {
			if err := c.new(off); err != nil {
				t.Errorf("New%s at %d: %v", name, off, err)
			}
		}
	}
	if _, err := NewMutex(nil, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("NewMutex(nil): %v, want ErrInvalid", err)
	}
}
