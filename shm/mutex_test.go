//go:build linux

package shm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestMutexBasic(t *testing.T) {
	r, _ := testRegion(t, 64)
	m, err := NewMutex(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Unlock of an unlocked Mutex: %v, want ErrNotOwner", err)
	}
	if err := m.Consistent(); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Consistent of an unlocked Mutex: %v, want ErrNotOwner", err)
	}
	if err := m.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	pid, tag, _ := selfID()
	if w := atomic.LoadUint64(m.w.p); w != uint64(pid)|uint64(tag)<<32 {
		t.Fatalf("lock word %#x, want pid %d tag %#x", w, pid, tag)
	}
	if ok, err := m.TryLock(); ok || err != nil {
		t.Fatalf("TryLock of a held Mutex: %v %v", ok, err)
	}
	if err := m.Consistent(); err != nil {
		t.Fatalf("Consistent on a normally held lock: %v", err)
	}
	if err := m.Unlock(); err != nil {
		t.Fatal(err)
	}
	if ok, err := m.TryLock(); !ok || err != nil {
		t.Fatalf("TryLock of a free Mutex: %v %v", ok, err)
	}
	if err := m.Unlock(); err != nil {
		t.Fatal(err)
	}
	if w := atomic.LoadUint64(m.w.p); w != 0 {
		t.Fatalf("unlocked word %#x, want 0", w)
	}
}

// TestMutexGoroutines checks mutual exclusion between goroutines of one
// process (the lock belongs to the process, but still excludes).
func TestMutexGoroutines(t *testing.T) {
	r, _ := testRegion(t, 1024)
	m, _ := NewMutex(r, 0)
	const goroutines, n = 4, 2000
	done := make(chan error)
	for range goroutines {
		go func() {
			for range n {
				if err := m.Lock(context.Background()); err != nil {
					done <- err
					return
				}
				plainIncrement(r.Bytes()[offPlain:])
				if err := m.Unlock(); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range goroutines {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := plainValue(r.Bytes()[offPlain:]); got != goroutines*n {
		t.Fatalf("counter = %d, want %d", got, goroutines*n)
	}
}

// TestMutexProcesses: 4 processes increment a plain counter under the Mutex.
// They run until the lock has passed between processes many times (so that
// a broken lock would lose updates), and the count must be exact.
func TestMutexProcesses(t *testing.T) {
	r, opts := testRegion(t, childSize)
	const procs = 4
	n := iterations(20000)
	var cs []*child
	for i := range procs {
		c := startChild(t, "mutex-incr", opts, "r", n, i+1)
		c.expect("ready")
		cs = append(cs, c)
	}
	handoffs, _ := NewCounter(r, offCount2)
	start := time.Now()
	for _, c := range cs {
		c.send("go")
	}
	overlapped := runUntil(r, func() bool { return handoffs.Load() >= int64(iterations(2000)) })
	total := 0
	for _, c := range cs {
		line := c.line()
		var k int
		if _, err := fmt.Sscanf(line, "done %d", &k); err != nil {
			t.Fatalf("child said %q", line)
		}
		total += k
		c.finish()
	}
	t.Logf("%d processes, %d locked increments in %v; the lock changed process %d times", procs, total, time.Since(start), handoffs.Load())
	if got := plainValue(r.Bytes()[offPlain:]); got != uint64(total) {
		t.Fatalf("counter = %d, want %d: the Mutex let two processes in at once", got, total)
	}
	if !overlapped {
		t.Fatalf("only %d hand-offs between processes in 20 s", handoffs.Load())
	}
}

func TestMutexContextCancel(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)

	// Held by another, live process: a deadline must be honoured and the
	// live owner must not be mistaken for a dead one.
	c := startChild(t, "mutex-hold", opts, "r")
	c.expect("locked nil")
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := m.Lock(ctx)
	cancel()
	el := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a Mutex held by a live process: %v, want DeadlineExceeded", err)
	}
	if el < 200*time.Millisecond || el > 2*time.Second {
		t.Fatalf("Lock with a 200ms deadline returned after %v", el)
	}
	t.Logf("deadline 200ms: Lock returned after %v", el)

	// Cancellation of a blocked Lock.
	ctx, cancel = context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- m.Lock(ctx) }()
	waitFor(t, 5*time.Second, "the waiter to sleep", func() bool { return atomic.LoadUint64(m.w.p)&flagWaiters != 0 })
	start = time.Now()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Lock: %v, want context.Canceled", err)
		}
		t.Logf("cancel noticed after %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled Lock did not return")
	}

	// The child still holds the lock and can release it normally.
	c.send("unlock")
	c.expect("unlocked nil")
	if err := m.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	c.finish()

	// A free lock is taken without looking at ctx.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := m.Lock(ctx); err != nil {
		t.Fatalf("Lock of a free Mutex with a done ctx: %v", err)
	}
	m.Unlock()
}

// killHolder starts a child that takes the Mutex, waits until it holds it,
// and SIGKILLs it. If reap, it also waits for the child to be reaped,
// otherwise the child stays a zombie.
func killHolder(t *testing.T, opts *Options, reap bool) *child {
	t.Helper()
	c := startChild(t, "mutex-hold", opts, "r")
	c.expect("locked nil")
	c.kill()
	if reap {
		c.reap()
	}
	return c
}

// TestMutexOwnerKilled: SIGKILL a child holding the lock; the next Lock gets
// ErrOwnerDead and holds the lock; after Consistent+Unlock the lock works.
func TestMutexOwnerKilled(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)
	n := iterations(20)
	var lat []time.Duration
	for i := range n {
		c := killHolder(t, opts, i%2 == 0) // odd rounds: owner is a zombie
		if r.Bytes()[offPlain+16] != 1 {
			t.Fatal("child did not mark the state dirty")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		err := m.Lock(ctx)
		cancel()
		lat = append(lat, time.Since(start))
		if !errors.Is(err, ErrOwnerDead) {
			t.Fatalf("round %d: Lock after the owner was killed: %v, want ErrOwnerDead", i, err)
		}
		if w := atomic.LoadUint64(m.w.p); w&pidMask != uint64(mustPID()) || w&flagDied == 0 {
			t.Fatalf("round %d: after ErrOwnerDead the word is %#x", i, w)
		}
		r.Bytes()[offPlain+16] = 0 // repair
		if err := m.Consistent(); err != nil {
			t.Fatal(err)
		}
		if err := m.Unlock(); err != nil {
			t.Fatalf("round %d: Unlock after Consistent: %v", i, err)
		}
		if err := m.Lock(context.Background()); err != nil {
			t.Fatalf("round %d: Lock after recovery: %v", i, err)
		}
		if err := m.Unlock(); err != nil {
			t.Fatal(err)
		}
		c.reap()
	}
	slices.Sort(lat)
	t.Logf("%d rounds; Lock on a dead owner took min %v median %v max %v", n, lat[0], lat[len(lat)/2], lat[len(lat)-1])
}

func mustPID() uint32 {
	pid, _, _ := selfID()
	return pid
}

// TestMutexOwnerKilledWhileWaiting: the parent is already blocked in Lock
// when the holder is killed; measure how long it takes to notice.
func TestMutexOwnerKilledWhileWaiting(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)
	n := iterations(8)
	var lat []time.Duration
	for i := range n {
		c := startChild(t, "mutex-hold", opts, "r")
		c.expect("locked nil")
		type result struct {
			err error
			at  time.Time
		}
		res := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := m.Lock(ctx)
			res <- result{err, time.Now()}
		}()
		waitFor(t, 5*time.Second, "the parent to block in Lock", func() bool {
			return atomic.LoadUint64(m.w.p)&flagWaiters != 0
		})
		if i%2 == 1 {
			// Not synchronisation: let the waiter reach its longest sleep
			// slice, so that this round measures the steady-state case.
			time.Sleep(50 * time.Millisecond)
		}
		t0 := time.Now()
		c.kill()
		got := <-res
		d := got.at.Sub(t0)
		lat = append(lat, d)
		if !errors.Is(got.err, ErrOwnerDead) {
			t.Fatalf("round %d: %v, want ErrOwnerDead", i, got.err)
		}
		if d > 500*time.Millisecond {
			t.Errorf("round %d: owner death noticed after %v, want < 500ms (target < 100ms)", i, d)
		}
		m.Consistent()
		if err := m.Unlock(); err != nil {
			t.Fatal(err)
		}
		c.reap()
	}
	if n <= 16 {
		t.Logf("kill-to-acquire latency per round: %v", lat)
	}
	slices.Sort(lat)
	t.Logf("detection latency over %d rounds: min %v median %v max %v", n, lat[0], lat[len(lat)/2], lat[len(lat)-1])
}

// TestMutexNotRecoverable: Unlock without Consistent makes the lock unusable
// for every process until Init.
func TestMutexNotRecoverable(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)
	killHolder(t, opts, true)
	if err := m.Lock(context.Background()); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock: %v, want ErrOwnerDead", err)
	}
	if err := m.Unlock(); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Unlock without Consistent: %v, want ErrNotRecoverable", err)
	}
	if err := m.Lock(context.Background()); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Lock after: %v, want ErrNotRecoverable", err)
	}
	if ok, err := m.TryLock(); ok || !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("TryLock after: %v %v, want false ErrNotRecoverable", ok, err)
	}
	if err := m.Unlock(); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Unlock after: %v, want ErrNotRecoverable", err)
	}
	c := startChild(t, "mutex-hold", opts, "r")
	c.expect("locked notrecoverable")
	c.finish()

	// A waiter blocked when the lock becomes not recoverable is woken.
	m.Init()
	killHolder(t, opts, true)
	if err := m.Lock(context.Background()); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock: %v, want ErrOwnerDead", err)
	}
	c = startChild(t, "mutex-hold", opts, "r")
	waitFor(t, 5*time.Second, "the child to block in Lock", func() bool {
		return atomic.LoadUint64(m.w.p)&flagWaiters != 0
	})
	if err := m.Unlock(); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Unlock without Consistent: %v", err)
	}
	c.expect("locked notrecoverable")
	c.finish()

	m.Init()
	if err := m.Lock(context.Background()); err != nil {
		t.Fatalf("Lock after Init: %v", err)
	}
	m.Unlock()
}

// TestMutexRepairerDies: the process that got ErrOwnerDead dies before
// Consistent; the next locker gets ErrOwnerDead again.
func TestMutexRepairerDies(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)
	killHolder(t, opts, true)
	c := startChild(t, "mutex-hold", opts, "r")
	c.expect("locked ownerdead")
	c.kill()
	c.reap()
	if err := m.Lock(context.Background()); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock after the repairer died: %v, want ErrOwnerDead", err)
	}
	m.Consistent()
	if err := m.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestMutexPIDReuse: a word naming a live PID with the wrong start-time tag
// belongs to a dead process whose PID was reused.
func TestMutexPIDReuse(t *testing.T) {
	r, opts := testRegion(t, childSize)
	m, _ := NewMutex(r, offLock)
	pid, tag, _ := selfID()
	if tag == 0 {
		t.Skip("/proc not readable: no tags")
	}

	// Our own PID, another start time.
	atomic.StoreUint64(m.w.p, uint64(pid)|uint64(tag+1)<<32)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Lock(ctx); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock on our own PID with a stale tag: %v, want ErrOwnerDead", err)
	}
	m.Consistent()
	m.Unlock()

	// A live child's PID.
	c := startChild(t, "idle", opts, "r")
	c.expect("ready")
	_, start, err := procStat(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	atomic.StoreUint64(m.w.p, uint64(c.pid())|uint64(tagOf(start)+1)<<32)
	if err := m.Lock(ctx); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock on a live PID with a wrong tag: %v, want ErrOwnerDead", err)
	}
	m.Consistent()
	m.Unlock()

	atomic.StoreUint64(m.w.p, uint64(c.pid())|uint64(tagOf(start))<<32)
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := m.Lock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock on a live PID with the right tag: %v, want DeadlineExceeded", err)
	}
	c.finish()
	if err := m.Lock(ctx); !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock after that process exited: %v, want ErrOwnerDead", err)
	}
	m.Consistent()
	m.Unlock()
}

func TestParseStat(t *testing.T) {
	line := "1234 (a) b) (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 100 18446744073709551615\n"
	st, start, err := parseStat([]byte(line))
	if err != nil || st != 'S' || start != 987654 {
		t.Fatalf("parseStat: %c %d %v", st, start, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 z"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
	if !alive(mustPID(), 0) {
		t.Fatal("we are not alive?")
	}
	if alive(maxPID+1, 0) || alive(0, 0) {
		t.Fatal("impossible PIDs alive")
	}
}
