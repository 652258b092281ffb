// Package proctest runs the test binary again as a child process playing a
// role, for tests whose subject crosses processes (a sender and a receiver
// in two processes, a peer killed with SIGKILL). The parent talks to a
// child through lines: the child prints them on its stdout, the parent
// reads them with Expect and writes to the child's stdin with Send.
//
// A package's TestMain calls Role first: in a child it returns the role
// and its arguments, and TestMain runs the role and exits instead of
// running the tests.
package proctest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Environment variables that make a test binary a child.
const (
	roleVar = "LOFT_PROCTEST_ROLE"
	argsVar = "LOFT_PROCTEST_ARGS"
)

// Role reports the role this process plays, and its arguments, if it was
// started by Start.
func Role() (role string, args []string, ok bool) {
	role = os.Getenv(roleVar)
	return role, strings.Fields(os.Getenv(argsVar)), role != ""
}

// Proc is a running child.
type Proc struct {
	// Cmd is the child's command; Cmd.Process its process.
	Cmd *exec.Cmd
	// Lines are the child's stdout, line by line, closed at its end.
	Lines <-chan string
	// Done is closed once the child exited and its stdout was read.
	Done <-chan struct{}
	// Grace is how long the test's cleanup waits for the child to exit
	// after closing its stdin before it kills the child. Zero: it kills at
	// once.
	Grace time.Duration

	t     testing.TB
	stdin io.WriteCloser
	stop  chan struct{} // closed when the test ends: lines nobody reads are dropped
}

// Start starts the test binary as a child playing role with args
// (arguments must not contain spaces), with env added to its environment.
// The child is stopped when the test ends (see Grace).
func Start(t testing.TB, role string, args []string, env ...string) *Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleVar+"="+role, argsVar+"="+strings.Join(args, " "))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1<<16)
	done := make(chan struct{})
	p := &Proc{Cmd: cmd, Lines: lines, Done: done, t: t, stdin: in, stop: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-p.stop:
			}
		}
		close(lines)
		// Wait closes the pipe: only once everything was read from it.
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		close(p.stop) // nobody reads Lines any more
		in.Close()
		if p.Grace > 0 {
			select {
			case <-done:
				return
			case <-time.After(p.Grace):
			}
		}
		p.Kill()
	})
	return p
}

// Expect waits up to d for a line starting with prefix, skipping others,
// and returns the rest of it, trimmed. It fails the test if the child ends
// or d passes first.
func (p *Proc) Expect(prefix string, d time.Duration) string {
	p.t.Helper()
	l := p.await(fmt.Sprintf("%q line", prefix), d, func(l string) bool { return strings.HasPrefix(l, prefix) })
	return strings.TrimSpace(strings.TrimPrefix(l, prefix))
}

// ExpectFields waits up to d for a line whose first field is name,
// skipping others, and returns its other fields. It fails the test if the
// child ends or d passes first.
func (p *Proc) ExpectFields(name string, d time.Duration) []string {
	p.t.Helper()
	l := p.await(fmt.Sprintf("%q line", name), d, func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 0 && f[0] == name
	})
	return strings.Fields(l)[1:]
}

// await returns the first line that match accepts, skipping others.
func (p *Proc) await(what string, d time.Duration, match func(string) bool) string {
	p.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-p.Lines:
			if !ok {
				p.t.Fatalf("child exited before printing a %s", what)
			}
			if match(l) {
				return l
			}
		case <-deadline:
			p.t.Fatalf("no %s from the child within %v", what, d)
		}
	}
}

// Kill kills the child (SIGKILL) and waits until it is gone.
// Lines the child printed before it died can still be read from Lines.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.Done
}

// Send writes a line to the child's stdin.
func (p *Proc) Send(line string) {
	fmt.Fprintln(p.stdin, line)
}
