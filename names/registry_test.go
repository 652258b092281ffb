package names

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRegisterBindLookupClose(t *testing.T) {
	reg := openReg(t)
	dir := reg.Dir()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("registry dir mode: %v, %v; want 0700", fi.Mode(), err)
	}
	lease, err := reg.Register(NodeInfo{ID: "n1", Addrs: []string{"tcp://127.0.0.1:7070"}})
	if err != nil {
		t.Fatal(err)
	}
	info := lease.Info()
	if info.PID != os.Getpid() || info.Host == "" || info.Started.IsZero() {
		t.Errorf("defaults not filled: %+v", info)
	}
	// A second registration of a live ID from the same process is refused:
	// the probe uses a new open file description, which conflicts.
	if _, err := reg.Register(NodeInfo{ID: "n1"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Register(n1) = %v, want ErrExists", err)
	}
	if err := lease.Bind("jobs", map[string]string{"kind": "channel", "capacity": "64"}); err != nil {
		t.Fatal(err)
	}
	hs, err := reg.Lookup("jobs")
	if err != nil || len(hs) != 1 {
		t.Fatalf("Lookup(jobs) = %+v, %v", hs, err)
	}
	if h := hs[0]; h.Node.ID != "n1" || h.Node.PID != os.Getpid() || h.Meta["capacity"] != "64" ||
		len(h.Node.Addrs) != 1 || h.Node.Addrs[0] != "tcp://127.0.0.1:7070" || !h.Node.Started.Equal(info.Started) {
		t.Errorf("holder = %+v, info = %+v", h, info)
	}
	if hs, err := reg.Lookup("nothing"); err != nil || hs == nil || len(hs) != 0 {
		t.Errorf("Lookup(nothing) = %#v, %v; want empty non-nil slice, nil", hs, err)
	}
	// Rebinding replaces the metadata.
	if err := lease.Bind("jobs", map[string]string{"kind": "topic"}); err != nil {
		t.Fatal(err)
	}
	if hs, _ := reg.Lookup("jobs"); len(hs) != 1 || hs[0].Meta["kind"] != "topic" {
		t.Errorf("after rebind: %+v", hs)
	}
	if err := lease.Unbind("jobs"); err != nil {
		t.Fatal(err)
	}
	if err := lease.Unbind("jobs"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Unbind = %v, want ErrNotFound", err)
	}
	if exists(filepath.Join(dir, "names", "jobs")) {
		t.Error("empty name directory left after Unbind")
	}
	if hs, _ := reg.Lookup("jobs"); len(hs) != 0 {
		t.Errorf("after Unbind: %+v", hs)
	}
	if err := lease.Bind("a", nil); err != nil {
		t.Fatal(err)
	}
	if err := lease.Bind("b/c", nil); err != nil {
		t.Fatal(err)
	}
	if err := lease.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lease.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := lease.Bind("x", nil); !errors.Is(err, ErrClosed) || !errors.Is(err, os.ErrClosed) {
		t.Errorf("Bind after Close = %v, want ErrClosed", err)
	}
	for _, sub := range []string{"nodes", "names"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		if len(ents) != 0 {
			t.Errorf("%s/ not empty after Close: %v", sub, ents)
		}
	}
	if _, err := reg.Node("n1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Node after Close = %v", err)
	}
	// The ID is free again.
	l2, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	l2.Close()
}

// TestDroppedLeaseIsDead: closing the descriptor without Close (what the
// kernel does on SIGKILL) makes the node dead, in the same process.
func TestDroppedLeaseIsDead(t *testing.T) {
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Bind("jobs", nil); err != nil {
		t.Fatal(err)
	}
	lease.f.Close() // as if the process died
	if hs, err := reg.Lookup("jobs"); err != nil || len(hs) != 0 {
		t.Fatalf("Lookup after the lock was dropped = %+v, %v", hs, err)
	}
	if exists(reg.nodePath("n1")) || exists(filepath.Join(reg.Dir(), "names", "jobs")) {
		t.Error("files of the dead node not collected")
	}
}

func TestInvalidNames(t *testing.T) {
	reg := openReg(t)
	for _, id := range []string{"", ".", "..", ".hidden", "a/b", "a b", "é", strings.Repeat("x", MaxIDLen+1), "x\x00"} {
		if _, err := reg.Register(NodeInfo{ID: id}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Register(%q) = %v, want ErrInvalidName", id, err)
		}
		if _, err := reg.Node(id); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Node(%q) = %v, want ErrInvalidName", id, err)
		}
	}
	if _, err := reg.Register(NodeInfo{ID: strings.Repeat("x", MaxIDLen)}); err != nil {
		t.Errorf("Register(max length ID) = %v", err)
	}
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	for _, name := range []string{"", "\xff", strings.Repeat("x", MaxNameLen+1)} {
		if err := lease.Bind(name, nil); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Bind(%q) = %v, want ErrInvalidName", name, err)
		}
		if _, err := reg.Lookup(name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Lookup(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

// TestAwkwardNames binds names that need escaping or hashing and reads
// them back through Lookup and List.
func TestAwkwardNames(t *testing.T) {
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	names := []string{
		".", "..", ".jobs", "a/b", "../../etc/passwd", "~tilde", "%41", "A", "a", "with space",
		"日本語", "\x00nul", strings.Repeat("x", MaxNameLen), strings.Repeat("é", MaxNameLen/2),
		strings.Repeat("/", MaxNameLen),
	}
	for _, n := range names {
		if err := lease.Bind(n, map[string]string{"n": n}); err != nil {
			t.Fatalf("Bind(%q): %v", n, err)
		}
	}
	for _, n := range names {
		hs, err := reg.Lookup(n)
		if err != nil || len(hs) != 1 || hs[0].Meta["n"] != n {
			t.Errorf("Lookup(%q) = %+v, %v", n, hs, err)
		}
	}
	list, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range list {
		got[e.Name] = true
	}
	for _, n := range names {
		if !got[n] {
			t.Errorf("List misses %q", n)
		}
	}
	if len(list) != len(names) {
		t.Errorf("List has %d entries, want %d", len(list), len(names))
	}
	// Nothing escaped the names/ directory.
	ents, _ := os.ReadDir(reg.Dir())
	for _, e := range ents {
		if n := e.Name(); n != "names" && n != "nodes" && n != lockFile {
			t.Errorf("unexpected %s in the registry directory", n)
		}
	}
}

func TestPermissions(t *testing.T) {
	t.Run("group and other bits", func(t *testing.T) {
		dir := newDir(t)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("Open(0777 dir) = %v, want fs.ErrPermission", err)
		}
		if !strings.Contains(err.Error(), "chmod 700") {
			t.Errorf("error does not say what to do: %v", err)
		}
		t.Log(err)
		if err := os.Chmod(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir); !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("Open(0750 dir) = %v, want fs.ErrPermission", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir); err != nil {
			t.Fatalf("Open(0700 dir) = %v", err)
		}
	})
	t.Run("other owner", func(t *testing.T) {
		dir := newDir(t)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Skipf("cannot give a directory to uid 65534 (needs root): %v", err)
		}
		_, err := Open(dir)
		if !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("Open(dir of uid 65534) = %v, want fs.ErrPermission", err)
		}
		if !strings.Contains(err.Error(), "65534") || !strings.Contains(err.Error(), "LOFT_RUNTIME_DIR") {
			t.Errorf("error does not say what happened and what to do: %v", err)
		}
		t.Log(err)
	})
	t.Run("not a directory", func(t *testing.T) {
		dir := newDir(t)
		if err := os.WriteFile(dir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir); err == nil {
			t.Fatal("Open(regular file) succeeded")
		}
	})
	t.Run("created with 0700 despite umask", func(t *testing.T) {
		old := unix.Umask(0o002)
		defer unix.Umask(old)
		dir := filepath.Join(t.TempDir(), "a", "b", "loft")
		if _, err := Open(dir); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dir, filepath.Join(dir, "nodes"), filepath.Join(dir, "names")} {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: mode %v, %v", p, fi.Mode(), err)
			}
		}
	})
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("LOFT_RUNTIME_DIR", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got, want := DefaultDir(), filepath.Join(os.TempDir(), fmt.Sprintf("loft-%d", os.Getuid())); got != want {
		t.Errorf("DefaultDir() = %q, want %q", got, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1234")
	if got := DefaultDir(); got != "/run/user/1234/loft" {
		t.Errorf("DefaultDir() with XDG_RUNTIME_DIR = %q", got)
	}
	t.Setenv("LOFT_RUNTIME_DIR", "/somewhere")
	if got := DefaultDir(); got != "/somewhere" {
		t.Errorf("DefaultDir() with LOFT_RUNTIME_DIR = %q", got)
	}
	dir := newDir(t)
	t.Setenv("LOFT_RUNTIME_DIR", dir)
	reg, err := Open("")
	if err != nil || reg.Dir() != dir {
		t.Fatalf("Open(\"\") = %v, %v; want dir %s", reg, err, dir)
	}
}

// TestGarbage plants files that the registry never writes and checks that
// reads neither fail nor return them, and that only files whose lock shows
// a dead owner are removed.
func TestGarbage(t *testing.T) {
	reg := openReg(t)
	dir := reg.Dir()
	nodes := filepath.Join(dir, "nodes")
	namesRoot := filepath.Join(dir, "names")
	write := func(p string, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	live, err := reg.Register(NodeInfo{ID: "live"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.Bind("jobs", nil); err != nil {
		t.Fatal(err)
	}

	// A node file of garbage held by a live lock: corrupt, never removed.
	write(filepath.Join(nodes, "lockedjunk.json"), "{not json")
	lj, err := os.Open(filepath.Join(nodes, "lockedjunk.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer lj.Close()
	if err := flock(lj, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(namesRoot, "jobs", "lockedjunk.json"), `{"name":"jobs","node":"lockedjunk","token":"x"}`)
	// A well-formed node file nobody locks: dead.
	write(filepath.Join(nodes, "ghost.json"), `{"id":"ghost","pid":1,"host":"h","started":"2020-01-01T00:00:00Z","token":"t"}`)
	write(filepath.Join(namesRoot, "jobs", "ghost.json"), `{"name":"jobs","node":"ghost","token":"t"}`)
	// Unlocked garbage node file.
	write(filepath.Join(nodes, "junk.json"), "\x00\x01garbage")
	write(filepath.Join(namesRoot, "jobs", "junk.json"), "[]")
	// A binding with no node file at all.
	write(filepath.Join(namesRoot, "jobs", "orphan.json"), `{"name":"jobs","node":"orphan","token":"t"}`)
	// Garbage bindings of the live node: wrong token, wrong name, not JSON.
	write(filepath.Join(namesRoot, "other", "live.json"), `{"name":"other","node":"live","token":"not-the-token"}`)
	write(filepath.Join(namesRoot, "wrong", "live.json"), `{"name":"jobs","node":"live","token":"`+live.token+`"}`)
	write(filepath.Join(namesRoot, "broken", "live.json"), `{"name":`)
	// Things that are not entries at all.
	write(filepath.Join(nodes, "README"), "hello")
	write(filepath.Join(nodes, "bad id.json"), "{}")
	write(filepath.Join(nodes, ".tmp-leftover"), "half written")
	write(filepath.Join(namesRoot, "jobs", ".tmp-leftover"), "half")
	write(filepath.Join(namesRoot, "plainfile"), "x")
	write(filepath.Join(namesRoot, "%zz", "live.json"), "{}")
	write(filepath.Join(namesRoot, "~short", "live.json"), "{}")
	if err := os.Mkdir(filepath.Join(nodes, "adir.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(nodes, "link.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(namesRoot, "jobs", "link.json")); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat(" ", maxFileSize+10)
	write(filepath.Join(nodes, "big.json"), big)

	hs, err := reg.Lookup("jobs")
	if err != nil || len(hs) != 1 || hs[0].Node.ID != "live" {
		t.Fatalf("Lookup(jobs) = %+v, %v; want only live", hs, err)
	}
	for _, n := range []string{"other", "wrong", "broken"} {
		if hs, err := reg.Lookup(n); err != nil || len(hs) != 0 {
			t.Errorf("Lookup(%s) = %+v, %v; want nothing", n, hs, err)
		}
	}
	ns, err := reg.Nodes()
	if err != nil || len(ns) != 1 || ns[0].ID != "live" {
		t.Errorf("Nodes() = %+v, %v", ns, err)
	}
	list, err := reg.List()
	if err != nil || len(list) != 1 || list[0].Name != "jobs" {
		t.Errorf("List() = %+v, %v", list, err)
	}
	if _, err := reg.Node("lockedjunk"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Node(lockedjunk) = %v", err)
	}
	// Collected: dead or ownerless, and leftovers found under the lock.
	for _, p := range []string{
		"nodes/ghost.json", "names/jobs/ghost.json", "nodes/junk.json", "names/jobs/junk.json",
		"names/jobs/orphan.json", "names/other/live.json", "nodes/big.json",
		"nodes/.tmp-leftover", "names/jobs/.tmp-leftover",
	} {
		if exists(filepath.Join(dir, p)) {
			t.Errorf("%s not collected", p)
		}
	}
	// Kept: held by a live lock (even if corrupt), or not an entry.
	for _, p := range []string{
		"nodes/lockedjunk.json", "names/jobs/lockedjunk.json", "names/broken/live.json",
		"names/wrong/live.json", "nodes/README", "nodes/bad id.json", "names/plainfile",
		"nodes/link.json", "names/jobs/link.json",
	} {
		if !exists(filepath.Join(dir, p)) {
			t.Errorf("%s removed, but its owner is alive or it is not an entry", p)
		}
	}
	// Once its lock is released, the corrupt node is collected like any.
	if err := lj.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Lookup("jobs"); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(nodes, "lockedjunk.json")) || exists(filepath.Join(namesRoot, "jobs", "lockedjunk.json")) {
		t.Error("corrupt node not collected after its lock was released")
	}
}

// TestConcurrentLease hammers one Lease and the Registry from many
// goroutines (run with -race).
func TestConcurrentLease(t *testing.T) {
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := reg.Register(NodeInfo{ID: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Bind("shared", nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				name := fmt.Sprintf("g%d-%d", g, i%3)
				if err := lease.Bind(name, nil); err != nil {
					errs <- err
					return
				}
				if err := lease.Bind("shared", map[string]string{"g": fmt.Sprint(g)}); err != nil {
					errs <- err
					return
				}
				hs, err := reg.Lookup("shared")
				if err != nil || len(hs) != 2 {
					errs <- fmt.Errorf("Lookup(shared) = %+v, %v", hs, err)
					return
				}
				if _, err := reg.List(); err != nil {
					errs <- err
					return
				}
				if err := lease.Unbind(name); err != nil && !errors.Is(err, ErrNotFound) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := lease.Close(); err != nil {
		t.Fatal(err)
	}
	if hs, err := reg.Lookup("shared"); err != nil || len(hs) != 1 || hs[0].Node.ID != "n2" {
		t.Errorf("after Close: %+v, %v", hs, err)
	}
}

// TestReadsDoNotWaitForTheLock: while another holder (here, another open
// file description, as a stopped process would be) holds the directory
// lock, reads still answer correctly, without collecting; collection
// happens on a later read.
func TestReadsDoNotWaitForTheLock(t *testing.T) {
	reg := openReg(t)
	lease, err := reg.Register(NodeInfo{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Bind("jobs", nil); err != nil {
		t.Fatal(err)
	}
	lease.f.Close() // n1 dies without cleaning up

	lf, err := os.OpenFile(filepath.Join(reg.Dir(), lockFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := flock(lf, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		hs, err := reg.Lookup("jobs")
		if err == nil && len(hs) != 0 {
			err = fmt.Errorf("dead holder returned: %+v", hs)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lookup waited for the directory lock")
	}
	if !exists(reg.nodePath("n1")) {
		t.Fatal("collected without the directory lock")
	}
	lf.Close()
	if _, err := reg.Lookup("jobs"); err != nil {
		t.Fatal(err)
	}
	if exists(reg.nodePath("n1")) {
		t.Error("not collected once the lock was free")
	}
}
