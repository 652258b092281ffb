package loft

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary re-executes itself as child processes: LOFT_TEST_CHILD
// names the role, LOFT_TEST_ARGS its arguments (space separated).
func TestMain(m *testing.M) {
	if role := os.Getenv("LOFT_TEST_CHILD"); role != "" {
		if err := runChild(role, strings.Fields(os.Getenv("LOFT_TEST_ARGS"))); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func runtimeDir(t testing.TB) string {
	return filepath.Join(t.TempDir(), "rt")
}

// child is a running child process with its stdout read line by line.
type child struct {
	t     testing.TB
	cmd   *exec.Cmd
	lines chan string
	stdin io.WriteCloser
	done  chan struct{}
}

func startChild(t testing.TB, dir, role string, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LOFT_TEST_CHILD="+role, "LOFT_TEST_ARGS="+strings.Join(args, " "), "LOFT_RUNTIME_DIR="+dir)
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
	c := &child{t: t, cmd: cmd, lines: make(chan string, 1<<16), stdin: in, done: make(chan struct{})}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// expect waits for a line with the given prefix and returns the rest.
func (c *child) expect(prefix string, d time.Duration) string {
	c.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return strings.TrimSpace(strings.TrimPrefix(l, prefix))
			}
		case <-deadline:
			c.t.Fatalf("no %q line from child within %v", prefix, d)
		}
	}
}

func (c *child) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

func (c *child) send(line string) {
	fmt.Fprintln(c.stdin, line)
}

func parseOpts(args []string) ChannelOptions {
	var o ChannelOptions
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "cap":
			o.Capacity, _ = strconv.Atoi(v)
		case "delivery":
			switch v {
			case "most":
				o.Delivery = AtMostOnce
			case "exactly":
				o.Delivery = ExactlyOnce
			}
		case "full":
			switch v {
			case "fail":
				o.OnFull = FailWhenFull
			case "drop":
				o.OnFull = DropOldest
			}
		case "max":
			o.MaxMessageSize, _ = strconv.Atoi(v)
		}
	}
	return o
}

func arg(args []string, key, def string) string {
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok && k == key {
			return v
		}
	}
	return def
}

// runChild runs one child role. Roles print "ready" once set up and then
// report what they receive as "got SENDER-ID DATA" lines.
func runChild(role string, args []string) error {
	ctx := context.Background()
	n, err := Open(ctx, Options{ListenTCP: arg(args, "tcp", "")})
	if err != nil {
		return err
	}
	defer n.Close()
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	printf := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(out, format, a...)
		out.Flush()
		mu.Unlock()
	}
	name := arg(args, "name", "jobs")
	switch role {
	case "recv", "hold", "subscribe", "step":
		var r *Receiver
		if role == "subscribe" {
			r, err = n.Subscribe(ctx, name, parseOpts(args))
		} else {
			r, err = n.Receive(ctx, name, parseOpts(args))
		}
		if err != nil {
			return err
		}
		printf("ready %s %s\n", n.ID(), strings.Join(n.Addrs(), " "))
		if role == "hold" {
			// Receive into the buffer but never take: messages stay in flight.
			io.Copy(io.Discard, os.Stdin)
			return nil
		}
		in := bufio.NewScanner(os.Stdin)
		for {
			if role == "step" && !in.Scan() {
				return nil
			}
			m, err := r.Recv(ctx)
			if err != nil {
				return err
			}
			if len(m.Files) > 0 {
				b, _ := io.ReadAll(m.Files[0])
				m.Files[0].Close()
				printf("file %s\n", b)
				continue
			}
			printf("got %s %s\n", m.From, m.Data)
		}
	case "soak-recv":
		// Acknowledge only after the message is reported: Handle acks once
		// the handler returns, so a kill between report and ack redelivers.
		r, err := n.Receive(ctx, name, parseOpts(args))
		if err != nil {
			return err
		}
		printf("ready %s\n", n.ID())
		return r.Handle(ctx, 1, func(_ context.Context, m Message) {
			printf("got %s %s\n", m.From, m.Data)
		})
	case "soak-send":
		// Send ids from start on; report every id up to which a Flush
		// succeeded (so every one of them was acknowledged by a receiver).
		start, _ := strconv.Atoi(arg(args, "start", "0"))
		s, err := n.Sender(ctx, name)
		if err != nil {
			return err
		}
		printf("ready %s\n", n.ID())
		for i := start; ; i++ {
			if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
				return err
			}
			if i%25 == 24 {
				if err := s.Flush(ctx); err != nil {
					return err
				}
				printf("flushed %d\n", i)
			}
		}
	case "inbox":
		printf("ready %s\n", n.ID())
		for {
			m, err := n.Inbox().Recv(ctx)
			if err != nil {
				return err
			}
			printf("got %s %s\n", m.From, m.Data)
		}
	}
	return fmt.Errorf("unknown role %q", role)
}
