//go:build linux

package shm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Multi-process tests re-run this test binary as a child. TestMain picks the
// child role from LOFT_SHM_CHILD; the child opens the region named by
// LOFT_SHM_NAME in LOFT_SHM_DIR and talks to the parent with lines on
// stdin/stdout. A child that loses its parent sees EOF on stdin and exits.
const (
	envRole = "LOFT_SHM_CHILD"
	envDir  = "LOFT_SHM_DIR"
	envName = "LOFT_SHM_NAME"
	envArgs = "LOFT_SHM_ARGS"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// privateDir returns a fresh mode-0700 directory for regions.
func privateDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// testRegion creates a region of size bytes in a private directory.
func testRegion(t testing.TB, size int) (*Region, *Options) {
	t.Helper()
	opts := &Options{Dir: privateDir(t)}
	r, err := Create("r", size, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, opts
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// iterations returns n, a quarter of it with -short, or n times
// LOFT_SHM_STRESS if that is set (a longer soak: LOFT_SHM_STRESS=10).
func iterations(n int) int {
	if s := os.Getenv("LOFT_SHM_STRESS"); s != "" {
		if k, err := strconv.Atoi(s); err == nil && k > 0 {
			return n * k
		}
	}
	if testing.Short() {
		return max(1, n/4)
	}
	return n
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// child is a test process running one role.
type child struct {
	t      testing.TB
	role   string
	cmd    *exec.Cmd
	out    *os.File
	lines  *bufio.Reader
	in     io.WriteCloser
	stderr *lockedBuffer
	done   chan struct{}
	err    error // from Wait, valid after done is closed
}

// startChild starts role against region opts.Dir/name with the given args.
func startChild(t testing.TB, role string, opts *Options, name string, args ...any) *child {
	t.Helper()
	sargs := make([]string, len(args))
	for i, a := range args {
		sargs[i] = fmt.Sprint(a)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// Under -race a process sleeps 1 s at exit by default (GORACE
	// atexit_sleep_ms); children exit often, so skip that. A race found in
	// a child still makes it exit non-zero, which fails the test.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), "GORACE="+gorace,
		envRole+"="+role, envDir+"="+opts.Dir, envName+"="+name, envArgs+"="+strings.Join(sargs, ","))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, role: role, cmd: cmd, out: pr, lines: bufio.NewReader(pr), in: in,
		stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.reap()
		pr.Close()
	})
	return c
}

// runUntil lets workers run until cond holds (checked every millisecond, for
// at most 20 s), then tells them to stop through the Counter at offStop. It
// reports whether cond held.
func runUntil(r *Region, cond func() bool) bool {
	stop, _ := NewCounter(r, offStop)
	defer stop.Store(1)
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// reap waits for the child to exit (once) and returns its exit error.
func (c *child) reap() error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	c.err = c.cmd.Wait()
	close(c.done)
	return c.err
}

// line reads one line from the child, failing the test after 20 s.
func (c *child) line() string {
	c.t.Helper()
	c.out.SetReadDeadline(time.Now().Add(20 * time.Second))
	s, err := c.lines.ReadString('\n')
	if err != nil {
		c.t.Fatalf("child %s (pid %d): reading its output: %v; stderr:\n%s", c.role, c.cmd.Process.Pid, err, c.stderr)
	}
	return strings.TrimSuffix(s, "\n")
}

// expect reads one line and fails unless it is want.
func (c *child) expect(want string) {
	c.t.Helper()
	if got := c.line(); got != want {
		c.t.Fatalf("child %s said %q, want %q; stderr:\n%s", c.role, got, want, c.stderr)
	}
}

func (c *child) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.in, s+"\n"); err != nil {
		c.t.Fatalf("child %s: %v", c.role, err)
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// kill sends SIGKILL.
func (c *child) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
}

// finish closes the child's stdin and waits for it to exit successfully.
func (c *child) finish() {
	c.t.Helper()
	c.in.Close()
	if err := c.reap(); err != nil {
		c.t.Fatalf("child %s: %v; stderr:\n%s", c.role, err, c.stderr)
	}
}

// errName gives the stable name of a lock result used in the line protocol.
func errName(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrOwnerDead):
		return "ownerdead"
	case errors.Is(err, ErrNotRecoverable):
		return "notrecoverable"
	case errors.Is(err, ErrWriterDead):
		return "writerdead"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrNotOwner):
		return "notowner"
	}
	return "error: " + err.Error()
}

// Layout used by the child roles, offsets in the user area.
const (
	offLock   = 0    // Mutex / RWMutex / Semaphore / Seqlock (up to 256 bytes)
	offPlain  = 512  // plain (non-atomic) data protected by the lock
	offCount1 = 1024 // Counters
	offCount2 = 1032
	offCount3 = 1040
	offStop   = 1048 // Counter: workers stop once it is non-zero and they did their minimum
	offEvent1 = 1088
	offEvent2 = 1096
	childSize = 4096
)

// runChild is the body of a child process. It prints "error: ..." and exits
// non-zero on unexpected errors.
func runChild(role string) int {
	fail := func(format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintln(os.Stderr, msg)
		fmt.Println("error: " + msg)
		return 2
	}
	r, err := Open(os.Getenv(envName), &Options{Dir: os.Getenv(envDir)})
	if err != nil {
		return fail("open: %v", err)
	}
	var args []int
	if s := os.Getenv(envArgs); s != "" {
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(f)
			if err != nil {
				return fail("bad arg %q", f)
			}
			args = append(args, v)
		}
	}
	arg := func(i int) int {
		if i < len(args) {
			return args[i]
		}
		return 0
	}
	stdin := bufio.NewReader(os.Stdin)
	waitLine := func() string {
		s, _ := stdin.ReadString('\n')
		return strings.TrimSpace(s)
	}
	ctx := context.Background()
	switch role {
	case "idle":
		fmt.Println("ready")
		waitLine()
		return 0

	case "mutex-incr": // args: min iterations, worker id (1..). Increments a plain counter under the Mutex.
		m, err := NewMutex(r, offLock)
		if err != nil {
			return fail("%v", err)
		}
		stop, _ := NewCounter(r, offStop)
		handoffs, _ := NewCounter(r, offCount2)
		fmt.Println("ready")
		if waitLine() != "go" {
			return fail("no go")
		}
		b := r.Bytes()[offPlain:]
		me := byte(arg(1))
		i := 0
		for ; i < arg(0) || stop.Load() == 0; i++ {
			if err := m.Lock(ctx); err != nil {
				return fail("lock: %v", err)
			}
			if b[32] != me { // the lock came from another process
				b[32] = me
				handoffs.Add(1)
			}
			plainIncrement(b)
			if err := m.Unlock(); err != nil {
				return fail("unlock: %v", err)
			}
			busy(i % 64) // give the others a chance to take the lock
		}
		fmt.Println("done", i)
		return 0

	case "mutex-hold": // Lock, report the result, mark the state dirty, hold until killed or EOF.
		m, err := NewMutex(r, offLock)
		if err != nil {
			return fail("%v", err)
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = m.Lock(lctx)
		cancel()
		markDirty(r.Bytes()[offPlain:])
		fmt.Println("locked " + errName(err))
		if waitLine() == "unlock" {
			fmt.Println("unlocked " + errName(m.Unlock()))
			waitLine()
		}
		return 0

	case "rw-worker": // args: iterations, worker id.
		return rwWorker(r, arg(0), arg(1))

	case "rw-hold-write", "rw-hold-read", "rw-lock": // hold until killed; "release" releases
		rw, err := NewRWMutex(r, offLock)
		if err != nil {
			return fail("%v", err)
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if role == "rw-hold-read" {
			err = rw.RLock(lctx)
		} else {
			err = rw.Lock(lctx)
		}
		cancel()
		fmt.Println("locked " + errName(err))
		if waitLine() == "release" {
			if role == "rw-hold-read" {
				err = rw.RUnlock()
			} else {
				err = rw.Unlock()
			}
			fmt.Println("released " + errName(err))
			waitLine()
		}
		return 0

	case "sem-worker": // args: iterations, limit
		return semWorker(r, arg(0), arg(1))

	case "sem-hold": // args: n. Acquire n permits and hold until killed.
		s, err := NewSemaphore(r, offLock)
		if err != nil {
			return fail("%v", err)
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = s.Acquire(lctx, arg(0))
		cancel()
		fmt.Println("acquired " + errName(err))
		waitLine()
		return 0

	case "event-pong": // args: rounds. Answers each odd value of Counter1 by making it even.
		ping, _ := NewEvent(r, offEvent1)
		pong, _ := NewEvent(r, offEvent2)
		c, _ := NewCounter(r, offCount1)
		fmt.Println("ready")
		for i := range arg(0) {
			seen := ping.Seq()
			for c.Load() != int64(2*i+1) {
				var err error
				if seen, err = ping.Wait(ctx, seen); err != nil {
					return fail("wait: %v", err)
				}
			}
			c.Add(1)
			pong.Signal()
		}
		fmt.Println("done")
		return 0

	case "counter-add": // args: iterations
		c, err := NewCounter(r, offCount1)
		if err != nil {
			return fail("%v", err)
		}
		fmt.Println("ready")
		if waitLine() != "go" {
			return fail("no go")
		}
		for range arg(0) {
			c.Add(1)
		}
		fmt.Println("done")
		return 0

	case "seqlock-writer": // stores 1, 2, 3, ... until told to stop
		s, err := NewSeqlock[seqVal](r, offLock)
		if err != nil {
			return fail("%v", err)
		}
		var stop atomic.Bool
		go func() {
			waitLine()
			stop.Store(true)
		}()
		fmt.Println("ready")
		i := uint64(0)
		for !stop.Load() {
			i++
			s.Store(makeSeqVal(i))
			busy(1000) // a writer that never pauses starves readers, by design
		}
		fmt.Println("done", i)
		return 0
	}
	return fail("unknown role %q", role)
}

// plainIncrement does a deliberately slow, non-atomic read-modify-write of a
// 32-bit counter, byte by byte, so that two processes inside it at once lose
// updates.
func plainIncrement(b []byte) {
	v := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
	busy(16)
	v++
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

var sink atomic.Uint64

// busy burns a little CPU (n short steps) without a system call.
func busy(n int) {
	x := uint64(n)
	for i := range n {
		x = x*6364136223846793005 + uint64(i)
	}
	sink.Add(x)
}

func plainValue(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
}

// markDirty records that a lock holder was in the middle of an update.
func markDirty(b []byte) { b[16] = 1 }

func rwWorker(r *Region, n, id int) int {
	rw, err := NewRWMutex(r, offLock)
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	readers, _ := NewCounter(r, offCount1)
	writers, _ := NewCounter(r, offCount2)
	maxReaders, _ := NewCounter(r, offCount3)
	stop, _ := NewCounter(r, offStop)
	b := r.Bytes()[offPlain : offPlain+64]
	ctx := context.Background()
	bad, writes := 0, 0
	fmt.Println("ready")
	for i := 0; i < n || stop.Load() == 0; i++ {
		if i%4 == id%4 {
			if err := rw.Lock(ctx); err != nil {
				fmt.Println("error: lock:", err)
				return 2
			}
			if writers.Add(1) != 1 || readers.Load() != 0 {
				bad++
			}
			// Write all 8 words with the same new value, one by one.
			v := atomic.LoadUint64(u64(b, 0)) + 1
			for w := range 8 {
				atomic.StoreUint64(u64(b, w*8), v)
				busy(4)
			}
			writes++
			writers.Add(-1)
			if err := rw.Unlock(); err != nil {
				fmt.Println("error: unlock:", err)
				return 2
			}
			continue
		}
		if err := rw.RLock(ctx); err != nil {
			fmt.Println("error: rlock:", err)
			return 2
		}
		nr := readers.Add(1)
		for {
			m := maxReaders.Load()
			if nr <= m || maxReaders.CompareAndSwap(m, nr) {
				break
			}
		}
		if writers.Load() != 0 {
			bad++
		}
		v0 := atomic.LoadUint64(u64(b, 0))
		for w := 1; w < 8; w++ {
			busy(4)
			if atomic.LoadUint64(u64(b, w*8)) != v0 {
				bad++
			}
		}
		readers.Add(-1)
		if err := rw.RUnlock(); err != nil {
			fmt.Println("error: runlock:", err)
			return 2
		}
		busy(i % 64)
	}
	fmt.Println("done", bad, writes)
	return 0
}

func semWorker(r *Region, n, limit int) int {
	s, err := NewSemaphore(r, offLock)
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	inUse, _ := NewCounter(r, offCount1)
	maxUse, _ := NewCounter(r, offCount2)
	stop, _ := NewCounter(r, offStop)
	ctx := context.Background()
	bad := 0
	fmt.Println("ready")
	for i := 0; i < n || stop.Load() == 0; i++ {
		if err := s.Acquire(ctx, 1); err != nil {
			fmt.Println("error: acquire:", err)
			return 2
		}
		v := inUse.Add(1)
		if v > int64(limit) {
			bad++
		}
		for {
			m := maxUse.Load()
			if v <= m || maxUse.CompareAndSwap(m, v) {
				break
			}
		}
		busy(32)
		inUse.Add(-1)
		if err := s.Release(1); err != nil {
			fmt.Println("error: release:", err)
			return 2
		}
		busy(i % 64)
	}
	fmt.Println("done", bad)
	return 0
}
