package names

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// inotify wraps an inotify descriptor in an *os.File, so reads wait in the
// Go netpoller instead of blocking a thread, and deadlines interrupt them.
type inotify struct {
	f  *os.File
	fd int

	mu       sync.Mutex // guards cancelled and ordering of deadline changes
	canceled bool
}

func newInotify() (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("names: inotify: %w", err)
	}
	return &inotify{f: os.NewFile(uintptr(fd), "inotify"), fd: fd}, nil
}

func (in *inotify) add(path string, mask uint32) (int32, error) {
	wd, err := unix.InotifyAddWatch(in.fd, path, mask)
	if err != nil {
		return -1, err
	}
	return int32(wd), nil
}

// cancel makes the pending and every later read fail with
// os.ErrDeadlineExceeded. It is safe to call from any goroutine.
func (in *inotify) cancel() {
	in.mu.Lock()
	in.canceled = true
	_ = in.f.SetReadDeadline(time.Unix(1, 0))
	in.mu.Unlock()
}

// setDeadline sets the read deadline unless cancel was called; it reports
// whether it was.
func (in *inotify) setDeadline(t time.Time) (canceled bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.canceled {
		return true
	}
	_ = in.f.SetReadDeadline(t)
	return false
}

// event is one decoded inotify event.
type event struct {
	wd   int32
	mask uint32
	name string
}

// parseEvents decodes the events in buf, as returned by read(2) on an
// inotify descriptor. It stops at a truncated event.
func parseEvents(buf []byte, fn func(event)) {
	for len(buf) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(buf[0:]))
		mask := binary.NativeEndian.Uint32(buf[4:])
		n := int(binary.NativeEndian.Uint32(buf[12:]))
		if n > len(buf)-unix.SizeofInotifyEvent {
			return
		}
		name := buf[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+n]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		fn(event{wd: wd, mask: mask, name: string(name)})
		buf = buf[unix.SizeofInotifyEvent+n:]
	}
}

// Watch masks.
const (
	rootMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
		unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	nameDirMask = unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ONLYDIR
	// A node's owner is the only process with nodes/<ID>.json open for
	// writing, so IN_CLOSE_WRITE on it means the owner closed or died.
	nodeFileMask = unix.IN_CLOSE_WRITE
)

// Release settling: the kernel queues IN_CLOSE_WRITE in __fput just
// before it releases the file's flock locks, so a probe made right after
// the event can still find the lock held for a few microseconds. After a
// close event the lock is probed again with a doubling interval, from
// settleFirst up to settleMax, for at most settleFor.
const (
	settleFirst = 20 * time.Microsecond
	settleMax   = 5 * time.Millisecond
	settleFor   = 500 * time.Millisecond
	// pollInterval is the probe interval of WaitDead when inotify or
	// /proc/self/fd is unavailable.
	pollInterval = 20 * time.Millisecond
)

// watchKind says what a watch descriptor watches.
type watchKind int

const (
	watchNamesRoot watchKind = iota
	watchNodesRoot
	watchNameDir
	watchNodeFile
)

type watchTarget struct {
	kind watchKind
	name string // node ID for watchNodeFile, encoded name for watchNameDir
}

// watcher is the state of one Changes goroutine.
type watcher struct {
	r   *Registry
	in  *inotify
	wds map[int32]watchTarget
	ch  chan struct{}
}

// Changes returns a channel that receives a value whenever something under
// names/ or nodes/ changes: a node registers, closes or dies (SIGKILL
// included), a name is bound or unbound, or entries are collected.
// Notifications are coalesced: the channel has a buffer of one and sends
// never block, so one receive may stand for many changes. A notification
// is sent after the change it reports, so reading the registry (Lookup,
// List) after receiving sees it. Read the current state after calling
// Changes, then again after each notification.
//
// The watch ends when ctx is done or on an inotify error; its goroutine
// then closes the inotify descriptor and the channel.
func (r *Registry) Changes(ctx context.Context) (<-chan struct{}, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	in, err := newInotify()
	if err != nil {
		return nil, err
	}
	w := &watcher{r: r, in: in, wds: map[int32]watchTarget{}, ch: make(chan struct{}, 1)}
	for _, root := range []struct {
		sub  string
		kind watchKind
	}{{namesDir, watchNamesRoot}, {nodesDir, watchNodesRoot}} {
		wd, err := in.add(filepath.Join(r.dir, root.sub), rootMask)
		if err != nil {
			in.f.Close()
			return nil, fmt.Errorf("names: watch %s: %w", root.sub, err)
		}
		w.wds[wd] = watchTarget{kind: root.kind}
	}
	w.rescan()
	stop := context.AfterFunc(ctx, in.cancel)
	go w.run(ctx, stop)
	return w.ch, nil
}

// rescan adds watches for every name directory and node file present.
// Adding a watch on an inode already watched returns its descriptor.
func (w *watcher) rescan() {
	if dirs, err := os.ReadDir(filepath.Join(w.r.dir, namesDir)); err == nil {
		for _, d := range dirs {
			if d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				w.addNameDir(d.Name())
			}
		}
	}
	if files, err := os.ReadDir(filepath.Join(w.r.dir, nodesDir)); err == nil {
		for _, f := range files {
			w.addNodeFile(f.Name())
		}
	}
}

func (w *watcher) addNameDir(enc string) {
	if wd, err := w.in.add(w.r.nameDir(enc), nameDirMask); err == nil {
		w.wds[wd] = watchTarget{kind: watchNameDir, name: enc}
	}
}

func (w *watcher) addNodeFile(fn string) {
	if strings.HasPrefix(fn, ".") || !strings.HasSuffix(fn, fileExt) {
		return
	}
	id := strings.TrimSuffix(fn, fileExt)
	if checkID(id) != nil {
		return
	}
	if wd, err := w.in.add(filepath.Join(w.r.dir, nodesDir, fn), nodeFileMask); err == nil {
		w.wds[wd] = watchTarget{kind: watchNodeFile, name: id}
	}
}

func (w *watcher) notify() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

func (w *watcher) run(ctx context.Context, stop func() bool) {
	defer func() {
		stop()
		w.in.f.Close()
		close(w.ch)
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.in.f.Read(buf)
		if err != nil {
			return // canceled (deadline) or inotify failed
		}
		changed := false
		var closed []string
		parseEvents(buf[:n], func(ev event) {
			if ev.mask&unix.IN_Q_OVERFLOW != 0 {
				w.rescan()
				changed = true
				return
			}
			t, ok := w.wds[ev.wd]
			if !ok {
				return
			}
			if ev.mask&unix.IN_IGNORED != 0 {
				delete(w.wds, ev.wd)
				return
			}
			switch t.kind {
			case watchNamesRoot:
				if ev.mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 && ev.mask&unix.IN_ISDIR != 0 &&
					!strings.HasPrefix(ev.name, ".") {
					w.addNameDir(ev.name) // before notifying: see rescan
				}
				changed = changed || !strings.HasPrefix(ev.name, ".")
			case watchNodesRoot:
				if ev.mask&unix.IN_MOVED_TO != 0 {
					w.addNodeFile(ev.name)
				}
				changed = changed || !strings.HasPrefix(ev.name, ".")
			case watchNameDir:
				changed = changed || !strings.HasPrefix(ev.name, ".")
			case watchNodeFile:
				if ev.mask&unix.IN_CLOSE_WRITE != 0 {
					closed = append(closed, t.name)
				}
			}
			if ev.mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				changed = true
			}
		})
		for _, id := range closed {
			w.settle(ctx, id)
			changed = true
		}
		if changed {
			w.notify()
		}
	}
}

// settle waits, briefly, until the lock of node id is seen released after
// an IN_CLOSE_WRITE on its file, so that a reader woken by the
// notification sees the node dead.
func (w *watcher) settle(ctx context.Context, id string) {
	d := settleFirst
	end := time.Now().Add(settleFor)
	for w.r.probeNode(id).status == nodeLive && time.Now().Before(end) {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		d = min(2*d, settleMax)
	}
}

// settleRetries counts close events after which WaitDead still found the
// lock held (see settleFor). Tests log it.
var settleRetries atomic.Int64

// testHookWaitDeadArmed, if set, is called by WaitDead once it found the
// node alive and is about to wait, with the way it waits ("inotify" or
// "poll"). Tests only.
var testHookWaitDeadArmed func(mode string)

// WaitDead waits until the node registered as id is dead: its owner
// closed the Lease, exited or was killed. It returns nil at once if no
// live node has that ID, and ctx.Err() if ctx is done first. It waits for
// the registration that is live when it is called: if the node dies and
// another process registers the same ID, WaitDead still returns.
//
// It does not poll while the node lives and does not block a thread while
// it waits: it watches the node file's inode (through /proc/self/fd) with
// inotify, whose IN_CLOSE_WRITE fires when the owner's descriptor is
// closed, by Close, exit or SIGKILL alike, and then probes the lock,
// retrying for up to half a second while the kernel finishes the release.
// Without inotify or /proc it falls back to probing every 20ms.
//
// Each call in progress uses one inotify instance (see
// /proc/sys/fs/inotify/max_user_instances; past the limit it falls back to
// probing). The instance is closed in the background after WaitDead
// returns, because closing one makes the kernel wait for a grace period
// (5-25ms measured), during which that goroutine holds a thread.
func (r *Registry) WaitDead(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	f, err := openNoFollow(r.nodePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("names: wait for node %q: %w", id, err)
	}
	defer f.Close()
	if held, err := heldByOther(f); err != nil {
		return fmt.Errorf("names: wait for node %q: %w", id, err)
	} else if !held {
		return nil
	}

	in, err := newInotify()
	if err != nil {
		return r.pollDead(ctx, f)
	}
	// Closing an inotify descriptor waits for an SRCU grace period in the
	// kernel (fsnotify_destroy_group), which measured 5-25ms here; close
	// it in the background so that WaitDead returns as soon as it knows.
	defer func() { go in.f.Close() }()
	rc, err := f.SyscallConn()
	if err != nil {
		return r.pollDead(ctx, f)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		// Watch the inode this descriptor holds, not whatever the path
		// names by the time the watch is added.
		_, werr = in.add("/proc/self/fd/"+strconv.Itoa(int(fd)),
			unix.IN_CLOSE_WRITE|unix.IN_ATTRIB|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF)
	}); err != nil || werr != nil {
		return r.pollDead(ctx, f)
	}
	// The owner may have died before the watch existed.
	if held, err := heldByOther(f); err != nil {
		return fmt.Errorf("names: wait for node %q: %w", id, err)
	} else if !held {
		return nil
	}
	if h := testHookWaitDeadArmed; h != nil {
		h("inotify")
	}
	stop := context.AfterFunc(ctx, in.cancel)
	defer stop()

	buf := make([]byte, 4096)
	var settleUntil time.Time // non-zero while probing after a close event
	delay := settleFirst
	for {
		deadline := time.Time{}
		if !settleUntil.IsZero() {
			deadline = time.Now().Add(delay)
		}
		if in.setDeadline(deadline) {
			return ctx.Err()
		}
		n, err := in.f.Read(buf)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("names: wait for node %q: %w", id, err)
		}
		closed, ignored := false, false
		parseEvents(buf[:n], func(ev event) {
			if ev.mask&(unix.IN_CLOSE_WRITE|unix.IN_Q_OVERFLOW) != 0 {
				closed = true
			}
			if ev.mask&unix.IN_IGNORED != 0 {
				ignored = true // the watch is gone (file system unmounted?)
			}
		})
		if ignored {
			return r.pollDead(ctx, f)
		}
		held, err := heldByOther(f)
		if err != nil {
			return fmt.Errorf("names: wait for node %q: %w", id, err)
		}
		if !held {
			return nil
		}
		switch {
		case closed:
			settleRetries.Add(1)
			settleUntil, delay = time.Now().Add(settleFor), settleFirst
		case !settleUntil.IsZero():
			delay = min(2*delay, settleMax)
			if time.Now().After(settleUntil) {
				settleUntil = time.Time{} // a writer other than the owner closed it
			}
		}
	}
}

// pollDead is WaitDead's fallback: probe the lock every pollInterval.
func (r *Registry) pollDead(ctx context.Context, f *os.File) error {
	if h := testHookWaitDeadArmed; h != nil {
		h("poll")
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		held, err := heldByOther(f)
		if err != nil {
			return fmt.Errorf("names: wait for node: %w", err)
		}
		if !held {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
