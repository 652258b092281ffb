package bench

import (
	"bufio"
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
	"time"
)

// Environment variables of the child protocol.
const (
	envRole     = "LOFT_BENCH_ROLE"     // role to run; its presence makes a process a child
	envDeadline = "LOFT_BENCH_DEADLINE" // Unix time in ns after which the child exits on its own
	envCPU      = "LOFT_BENCH_CPU"      // the CPU the child runs on, for a case with Pin
)

// childGrace is how long a child whose context has ended (parent gone or
// deadline passed) may take to return before it exits anyway.
const childGrace = time.Second

var (
	rolesMu sync.Mutex
	roles   = map[string]func(ctx context.Context, args []string) error{}

	// liveChildren counts children started and not yet reaped, in this process.
	liveChildren atomic.Int64
)

// RegisterRole registers a child role: what a re-executed child process does
// when the parent spawns it with this role name. fn runs in the child with the
// arguments given to Spawn; it talks to the parent with [ToParent] and
// [FromParent] and must not write anything else to stdout. A non-nil error is
// written to stderr, which the parent attaches to its own error. ctx ends when
// the parent closes the child's stdin or the child's deadline passes; fn should
// return soon after, or the child exits anyway a second later. RegisterRole
// panics if the name is empty or already taken; call it from init.
func RegisterRole(name string, fn func(ctx context.Context, args []string) error) {
	rolesMu.Lock()
	defer rolesMu.Unlock()
	if name == "" || fn == nil {
		panic("bench: RegisterRole with empty name or nil func")
	}
	if _, dup := roles[name]; dup {
		panic("bench: role " + name + " registered twice")
	}
	roles[name] = fn
}

// MaybeRunChild makes this process a benchmark child if it was started as one:
// if the environment variable LOFT_BENCH_ROLE is set, it runs that role and
// exits the process (status 0 on success, 1 on error); otherwise it returns
// at once. Call it first thing in main, and in TestMain for tests that run
// benchmarks, so that nothing else writes to stdout in a child.
func MaybeRunChild() {
	role, ok := os.LookupEnv(envRole)
	if !ok {
		return
	}
	os.Exit(runChild(role, os.Args[1:]))
}

// parent-side state of a child process, seen from inside the child.
var (
	toParentMu  sync.Mutex
	parentLines = make(chan string, 16) // lines from stdin; closed at EOF
)

func runChild(role string, args []string) int {
	rolesMu.Lock()
	fn := roles[role]
	rolesMu.Unlock()
	if fn == nil {
		fmt.Fprintf(os.Stderr, "loft bench child: unknown role %q\n", role)
		return 2
	}
	if s := os.Getenv(envCPU); s != "" {
		cpu, err := strconv.Atoi(s)
		if err == nil {
			_, err = pinProcess(cpu)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "loft bench child %s: pinning to CPU %s: %v\n", role, s, err)
			return 2
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if s := os.Getenv(envDeadline); s != "" {
		if ns, err := strconv.ParseInt(s, 10, 64); err == nil {
			var c2 context.CancelFunc
			ctx, c2 = context.WithDeadline(ctx, time.Unix(0, ns))
			defer c2()
		}
	}
	// The parent's end of stdin closing means the parent is done or gone.
	go func() {
		defer cancel()
		defer close(parentLines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			parentLines <- sc.Text()
		}
	}()
	// Watchdog: a role blocked in a system call must not outlive its parent.
	go func() {
		<-ctx.Done()
		time.Sleep(childGrace)
		fmt.Fprintf(os.Stderr, "loft bench child %s: %v; exiting\n", role, context.Cause(ctx))
		os.Exit(3)
	}()
	if err := fn(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "loft bench child %s: %v\n", role, err)
		return 1
	}
	return 0
}

// ToParent writes one line to the parent over the control channel (the
// child's stdout). It is for use in a child role only; the parent reads the
// line with [Child.Expect] or [Child.ReadLine]. The line must not contain a
// newline.
func ToParent(format string, args ...any) error {
	toParentMu.Lock()
	defer toParentMu.Unlock()
	_, err := fmt.Fprintf(os.Stdout, format+"\n", args...)
	return err
}

// FromParent reads one line sent by the parent with [Child.Send]. It is for
// use in a child role only. It returns io.EOF once the parent has closed the
// control channel, and ctx.Err() when ctx ends first.
func FromParent(ctx context.Context) (string, error) {
	select {
	case line, ok := <-parentLines:
		if !ok {
			return "", io.EOF
		}
		return line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// InheritedFile returns, in a child, the i-th file the parent passed with
// [Env.SpawnFiles] (i counts from 0; it is file descriptor 3+i).
func InheritedFile(i int, name string) *os.File {
	return os.NewFile(uintptr(3+i), name)
}

// Child is a running benchmark child process, seen from the parent. Its
// methods are safe for concurrent use. The harness closes every child a case
// spawned when the case returns; a case may close a child earlier.
type Child struct {
	// Role is the role the child runs.
	Role string

	cmd     *exec.Cmd
	stdin   *os.File
	lines   chan string // stdout lines; closed at EOF
	stderr  tailBuffer
	errDone chan struct{} // closed when stderr reaches EOF

	sendMu  sync.Mutex
	done    chan struct{} // closed when the process has been reaped
	waitErr error
	once    sync.Once
}

// startChild starts the running executable as a child with the given role.
// files become descriptors 3, 4, ... in the child; the caller keeps (and
// should close) its own copies. deadline is when the child gives up on its
// own. The child is killed when ctx ends.
func startChild(ctx context.Context, role string, files []*os.File, deadline time.Time, cpu int, args ...string) (*Child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: finding own executable: %w", err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.ExtraFiles = files
	cmd.Env = append(childEnv(), envRole+"="+role)
	if !deadline.IsZero() {
		cmd.Env = append(cmd.Env, envDeadline+"="+strconv.FormatInt(deadline.UnixNano(), 10))
	}
	if cpu >= 0 {
		cmd.Env = append(cmd.Env, envCPU+"="+strconv.Itoa(cpu))
	}
	cmd.SysProcAttr = sysProcAttr()
	err = startCmd(cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("bench: starting child %s: %w", role, err)
	}
	liveChildren.Add(1)
	c := &Child{
		Role:    role,
		cmd:     cmd,
		stdin:   inW,
		lines:   make(chan string, 16),
		errDone: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go func() {
		defer close(c.lines)
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	go func() {
		defer close(c.errDone)
		defer errR.Close()
		io.Copy(&c.stderr, errR)
	}()
	go func() {
		c.waitErr = cmd.Wait()
		liveChildren.Add(-1)
		close(c.done)
	}()
	context.AfterFunc(ctx, c.kill)
	return c, nil
}

// childEnv is this process's environment without the child protocol variables.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, envRole+"=") || strings.HasPrefix(kv, envDeadline+"=") || strings.HasPrefix(kv, envCPU+"=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Pid returns the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Send writes one line to the child, which reads it with [FromParent].
func (c *Child) Send(format string, args ...any) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if _, err := fmt.Fprintf(c.stdin, format+"\n", args...); err != nil {
		return c.errorf("sending to child: %v", err)
	}
	return nil
}

// ReadLine returns the next line the child wrote with [ToParent]. If the
// child exits first, or ctx ends first, the error says so and carries the
// tail of the child's stderr.
func (c *Child) ReadLine(ctx context.Context) (string, error) {
	select {
	case line, ok := <-c.lines:
		if ok {
			return line, nil
		}
	case <-ctx.Done():
		return "", c.errorf("waiting for child: %v", context.Cause(ctx))
	}
	// stdout closed: the child is exiting; wait a little for its status.
	select {
	case <-c.done:
		c.waitStderr(time.Second)
		return "", c.errorf("child exited (%v) before saying anything more", c.waitErr)
	case <-time.After(2 * time.Second):
		return "", c.errorf("child closed its stdout")
	case <-ctx.Done():
		return "", c.errorf("waiting for child: %v", context.Cause(ctx))
	}
}

// Expect reads the next line from the child and checks that its first word
// is word; it returns the remaining words. For example, after the child calls
// ToParent("ready %s", addr), Expect(ctx, "ready") returns []string{addr}.
func (c *Child) Expect(ctx context.Context, word string) ([]string, error) {
	line, err := c.ReadLine(ctx)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != word {
		return nil, c.errorf("expected %q from child, got %q", word, line)
	}
	return f[1:], nil
}

// Close ends the child: it closes the child's stdin (which cancels the role's
// context), gives it a moment to exit, then kills it, and reaps it. It is
// idempotent and returns nil unless the child could not be reaped.
func (c *Child) Close() error {
	c.once.Do(func() { c.stdin.Close() })
	select {
	case <-c.done:
	case <-time.After(200 * time.Millisecond):
		c.kill()
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		return c.errorf("child not reaped 10s after SIGKILL")
	}
	c.waitStderr(time.Second)
	return nil
}

// kill sends SIGKILL unless the child has been reaped already.
func (c *Child) kill() {
	select {
	case <-c.done:
	default:
		c.cmd.Process.Kill()
	}
}

// StderrTail returns the last few kilobytes the child wrote to stderr.
func (c *Child) StderrTail() string { return c.stderr.String() }

func (c *Child) waitStderr(d time.Duration) {
	select {
	case <-c.errDone:
	case <-time.After(d):
	}
}

// errorf formats an error about the child, with its stderr tail.
func (c *Child) errorf(format string, args ...any) error {
	msg := fmt.Sprintf("child %s (pid %d): ", c.Role, c.Pid()) + fmt.Sprintf(format, args...)
	if t := strings.TrimSpace(c.StderrTail()); t != "" {
		msg += "; stderr: " + t
	}
	return errors.New(msg)
}

// tailBuffer keeps the last tailMax bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 2048

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
