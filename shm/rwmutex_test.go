//go:build linux

package shm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func TestRWMutexBasic(t *testing.T) {
	r, _ := testRegion(t, 1024)
	rw, err := NewRWMutex(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	if err := rw.RUnlock(); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("RUnlock without RLock: %v, want ErrNotOwner", err)
	}
	// Two read locks at once.
	if err := rw.RLock(bg); err != nil {
		t.Fatal(err)
	}
	other := make(chan error)
	go func() { other <- rw.RLock(bg) }()
	select {
	case err := <-other:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second reader was blocked by the first")
	}
	if ok, err := rw.TryLock(); ok || err != nil {
		t.Fatalf("TryLock while read-locked: %v %v", ok, err)
	}
	short, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	if err := rw.Lock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while read-locked: %v, want DeadlineExceeded", err)
	}
	cancel()
	if w := atomic.LoadUint64(rw.w.p); w != 0 {
		t.Fatalf("writer word after a cancelled Lock: %#x, want 0", w)
	}
	// A waiting writer blocks new readers and gets in when readers leave.
	wres := make(chan error)
	go func() { wres <- rw.Lock(bg) }()
	waitFor(t, 5*time.Second, "the writer to wait", func() bool { return atomic.LoadUint64(rw.w.p) != 0 })
	short, cancel = context.WithTimeout(bg, 50*time.Millisecond)
	if err := rw.RLock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RLock with a writer waiting: %v, want DeadlineExceeded", err)
	}
	cancel()
	rw.RUnlock()
	select {
	case <-wres:
		t.Fatal("writer got in with a reader left")
	default:
	}
	rw.RUnlock()
	if err := <-wres; err != nil {
		t.Fatal(err)
	}
	if err := rw.RUnlock(); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("RUnlock with no read lock: %v", err)
	}
	if err := rw.Unlock(); err != nil {
		t.Fatal(err)
	}
	if ok, err := rw.TryLock(); !ok || err != nil {
		t.Fatalf("TryLock of a free RWMutex: %v %v", ok, err)
	}
	rw.Unlock()
	for i, v := range rw.readers.s {
		if v != 0 {
			t.Fatalf("reader slot %d left at %#x", i, v)
		}
	}
}

// TestRWMutexManyReadLocks holds more read locks in one process than one slot
// can count.
func TestRWMutexManyReadLocks(t *testing.T) {
	r, _ := testRegion(t, 1024)
	rw, _ := NewRWMutex(r, 0)
	const n = 2*slotCountMax + 5
	for range n {
		if err := rw.RLock(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	used := 0
	for _, v := range rw.readers.s {
		if v != 0 {
			used++
		}
	}
	if used != 3 {
		t.Fatalf("%d read locks use %d slots, want 3", n, used)
	}
	for range n {
		if err := rw.RUnlock(); err != nil {
			t.Fatal(err)
		}
	}
	if !rw.readers.empty() {
		t.Fatal("slots left in use")
	}
}

// TestRWMutexProcesses: 4 processes mix reads and writes until readers have
// overlapped; writers must be alone, readers must never see a half-written
// value.
func TestRWMutexProcesses(t *testing.T) {
	r, opts := testRegion(t, childSize)
	const procs = 4
	n := iterations(20000)
	var cs []*child
	for i := range procs {
		cs = append(cs, startChild(t, "rw-worker", opts, "r", n, i))
	}
	for _, c := range cs {
		c.expect("ready")
	}
	maxReaders, _ := NewCounter(r, offCount3)
	overlapped := runUntil(r, func() bool { return maxReaders.Load() >= 2 })
	writes := uint64(0)
	for _, c := range cs {
		line := c.line()
		var bad, w uint64
		if _, err := fmt.Sscanf(line, "done %d %d", &bad, &w); err != nil {
			t.Fatalf("worker said %q", line)
		}
		if bad != 0 {
			t.Errorf("worker saw %d exclusion violations", bad)
		}
		writes += w
		c.finish()
	}
	t.Logf("max concurrent readers seen: %d; %d writes", maxReaders.Load(), writes)
	if v := atomic.LoadUint64(u64(r.Bytes()[offPlain:], 0)); v != writes {
		t.Fatalf("value = %d, want %d writes", v, writes)
	}
	if !overlapped {
		t.Fatal("readers never overlapped in 20 s")
	}
}

func TestRWMutexWriterKilled(t *testing.T) {
	r, opts := testRegion(t, childSize)
	rw, _ := NewRWMutex(r, offLock)
	c := startChild(t, "rw-hold-write", opts, "r")
	c.expect("locked nil")
	c.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := rw.RLock(ctx); !errors.Is(err, ErrWriterDead) {
		t.Fatalf("RLock with a dead writer: %v, want ErrWriterDead", err)
	}
	t.Logf("RLock noticed the dead writer after %v", time.Since(start))
	if err := rw.Lock(ctx); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock with a dead writer: %v, want ErrOwnerDead", err)
	}
	if err := rw.Consistent(); err != nil {
		t.Fatal(err)
	}
	if err := rw.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := rw.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	rw.RUnlock()
	c.reap()

	// Without Consistent: not recoverable, for readers too.
	c = startChild(t, "rw-hold-write", opts, "r")
	c.expect("locked nil")
	c.kill()
	if err := rw.Lock(ctx); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock with a dead writer: %v, want ErrOwnerDead", err)
	}
	if err := rw.Unlock(); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Unlock without Consistent: %v, want ErrNotRecoverable", err)
	}
	if err := rw.RLock(ctx); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("RLock: %v, want ErrNotRecoverable", err)
	}
	rw.Init()
	if err := rw.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	rw.RUnlock()
}

func TestRWMutexReaderKilled(t *testing.T) {
	r, opts := testRegion(t, childSize)
	rw, _ := NewRWMutex(r, offLock)
	for round := range iterations(4) {
		c := startChild(t, "rw-hold-read", opts, "r")
		c.expect("locked nil")
		if ok, _ := rw.TryLock(); ok {
			t.Fatal("TryLock succeeded with a live reader")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res := make(chan error, 1)
		var done atomic.Int64
		go func() {
			res <- rw.Lock(ctx)
			done.Store(time.Now().UnixNano())
		}()
		waitFor(t, 5*time.Second, "the writer to wait for the reader", func() bool { return atomic.LoadUint64(rw.w.p) != 0 })
		t0 := time.Now()
		c.kill()
		if round%2 == 1 {
			c.reap()
		}
		if err := <-res; err != nil {
			t.Fatalf("Lock after the reader died: %v, want nil", err)
		}
		cancel()
		t.Logf("round %d: dead reader dropped %v after the kill", round, time.Unix(0, done.Load()).Sub(t0))
		rw.Unlock()
		c.reap()
	}
}

// TestRWMutexAbandonedTakeover: a writer dies while waiting for a live
// reader; the next writer takes over but its ctx ends before the reader
// leaves, so the state stays flagged for the writer after it.
func TestRWMutexAbandonedTakeover(t *testing.T) {
	r, opts := testRegion(t, childSize)
	rw, _ := NewRWMutex(r, offLock)
	reader := startChild(t, "rw-hold-read", opts, "r")
	reader.expect("locked nil")
	writer := startChild(t, "rw-lock", opts, "r")
	waitFor(t, 5*time.Second, "the child writer to wait for readers", func() bool {
		return atomic.LoadUint64(rw.w.p)&pidMask == uint64(writer.pid())
	})
	writer.kill()
	writer.reap()

	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if err := rw.Lock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with a live reader: %v, want DeadlineExceeded", err)
	}
	cancel()
	if w := atomic.LoadUint64(rw.w.p); w&pidMask != pidAbandoned {
		t.Fatalf("writer word %#x, want abandoned", w)
	}
	if err := rw.RLock(context.Background()); !errors.Is(err, ErrWriterDead) {
		t.Fatalf("RLock: %v, want ErrWriterDead", err)
	}
	reader.send("release")
	reader.expect("released nil")
	reader.finish()
	if err := rw.Lock(context.Background()); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock: %v, want ErrOwnerDead", err)
	}
	rw.Consistent()
	if err := rw.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestRWMutexReaderTableFull: with every slot taken by other live processes,
// RLock waits until one frees up.
func TestRWMutexReaderTableFull(t *testing.T) {
	r, opts := testRegion(t, childSize)
	rw, _ := NewRWMutex(r, offLock)
	c := startChild(t, "idle", opts, "r")
	c.expect("ready")
	_, start, err := procStat(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	fake := uint64(c.pid()) | 1<<slotCountShift | uint64(tagOf(start))<<32
	for i := range rw.readers.s {
		atomic.StoreUint64(&rw.readers.s[i], fake)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := rw.RLock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RLock with a full table: %v, want DeadlineExceeded", err)
	}
	res := make(chan error)
	go func() { res <- rw.RLock(context.Background()) }()
	waitFor(t, 5*time.Second, "the reader to wait", func() bool { return atomic.LoadUint32(rw.wwait) != 0 })
	c.finish() // its slots now belong to a dead process
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RLock did not take a dead process's slot")
	}
	rw.RUnlock()
}

func u64(b []byte, off int) *uint64 { return (*uint64)(unsafe.Pointer(&b[off])) }
