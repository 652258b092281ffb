package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// child is a running child process, seen from the parent.
type child struct {
	label   string // "worker 2", for messages
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string   // stdout, line by line; closed at EOF
	quit    chan struct{} // closed when the parent stops reading lines
	exited  chan struct{} // closed once the process is reaped
	stderr  tailBuffer
	ended   atomic.Bool // the parent stopped or killed it: its exit is expected
	waitErr error       // how it exited; read after exited is closed
	id      string      // node id, from its "ready" line
}

// spawn starts a child playing role. If the child exits with a failure the
// parent did not cause, fail is called with an error saying so (with the
// tail of the child's stderr), which cuts the current part short.
func (t *tour) spawn(label string, fail context.CancelCauseFunc, role string, args ...string) (*child, error) {
	cmd := exec.Command(t.exe, append([]string{ChildCommand, role}, args...)...)
	deadline := time.Now().Add(t.partTimeout + 10*time.Second)
	cmd.Env = append(os.Environ(), t.cfg.Env...)
	cmd.Env = append(cmd.Env,
		"LOFT_RUNTIME_DIR="+t.rt,
		envDeadline+"="+strconv.FormatInt(deadline.UnixNano(), 10),
	)
	c := &child{
		label:  label,
		cmd:    cmd,
		lines:  make(chan string, 1024),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	cmd.Stderr = &c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("starting %s (%s %s): %w", label, t.exe, ChildCommand, err)
	}
	t.mu.Lock()
	t.children = append(t.children, c)
	t.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			case <-c.quit: // nobody listens any more: drain to EOF
			}
		}
		io.Copy(io.Discard, stdout)
		close(c.lines)
		c.waitErr = cmd.Wait()
		close(c.exited)
		if c.waitErr != nil && !c.ended.Load() && fail != nil {
			fail(c.errorf("exited unexpectedly: %v", c.waitErr))
		}
	}()
	return c, nil
}

// errorf formats an error about c, with the tail of its stderr.
func (c *child) errorf(format string, args ...any) error {
	msg := fmt.Sprintf("%s (pid %d): ", c.label, c.cmd.Process.Pid) + fmt.Sprintf(format, args...)
	if tail := strings.TrimSpace(c.stderr.String()); tail != "" {
		msg += "; its stderr: " + tail
	}
	return errors.New(msg)
}

// expect waits for a line starting with the word prefix and returns the
// rest of it; other lines are skipped.
func (c *child) expect(ctx context.Context, prefix string) (string, error) {
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				<-c.exited
				return "", c.errorf("exited (%v) before saying %q", c.waitErr, prefix)
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok && (rest == "" || rest[0] == ' ') {
				return strings.TrimSpace(rest), nil
			}
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %s to say %q: %w", c.label, prefix, context.Cause(ctx))
		}
	}
}

// ready waits for the child's "ready NODEID" line and records the id.
func (c *child) ready(ctx context.Context) error {
	id, err := c.expect(ctx, "ready")
	c.id = id
	return err
}

// kill sends SIGKILL at once and returns when it was sent. The child is
// reaped in the background; stop or stopAll waits for that.
func (c *child) kill() time.Time {
	c.ended.Store(true)
	at := time.Now()
	c.cmd.Process.Signal(syscall.SIGKILL)
	return at
}

// stop asks the child to end by closing its stdin, waits up to grace for
// it to exit, then kills it, and waits until it is reaped.
func (c *child) stop(grace time.Duration) {
	if c.ended.CompareAndSwap(false, true) {
		close(c.quit)
		c.stdin.Close()
	} else {
		select {
		case <-c.quit:
		default:
			close(c.quit)
		}
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.exited:
		return
	case <-t.C:
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// gather reads "got DATA" lines from several children until fn returns
// true. fn gets the index of the child in cs and DATA.
func gather(ctx context.Context, cs []*child, fn func(i int, data string) (done bool)) error {
	cases := make([]reflect.SelectCase, len(cs)+1)
	for i, c := range cs {
		cases[i] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c.lines)}
	}
	cases[len(cs)] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}
	for {
		i, v, ok := reflect.Select(cases)
		if i == len(cs) {
			return context.Cause(ctx)
		}
		if !ok {
			<-cs[i].exited
			return cs[i].errorf("exited (%v) while the parent waited for its messages", cs[i].waitErr)
		}
		if data, ok := strings.CutPrefix(v.String(), "got "); ok && fn(i, data) {
			return nil
		}
	}
}

// tailBuffer keeps the last 2 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	const max = 2048
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
