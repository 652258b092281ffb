package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rmi/rmidemo"
	"github.com/loft-ipc/loft/rpc/rpcdemo"
)

// ChildCommand is the first argument of a demo child process: the program
// is started as `PROGRAM __demo-child ROLE ARGS...` and must then call
// RunChild(ctx, ROLE, ARGS, stdin, stdout).
const ChildCommand = "__demo-child"

// envDeadline carries a child's deadline (Unix nanoseconds): a child never
// outlives it, whatever happens to its parent.
const envDeadline = "LOFT_DEMO_DEADLINE"

// RunChild runs one demo child role. It is the whole of a child process:
// the demo parent starts it and talks to it through stdin and stdout.
// It opens a loft node in the runtime directory given by LOFT_RUNTIME_DIR,
// writes "ready NODEID" to stdout once set up, then plays its role,
// reporting on stdout one line per event ("got DATA" for each message
// received). It returns when its work is done, when stdin reaches EOF (the
// parent is done or gone), when ctx ends or when the deadline the parent
// set passes.
//
// The roles, with their arguments (key=value):
//
//	produce name=CH n=N   send N messages "0".."N-1" on channel CH, then "sent N NANOS"
//	recv name=CH cap=C    receive on channel CH, reporting every message
//	subscribe name=T cap=C  subscribe to topic T, reporting every message
//	hold name=CH cap=C    receive on channel CH into the buffer, never taking
//	echo                  answer every inbox message with "pong: DATA"
//	rpc                   serve the demo's RPC service (rpc/rpcdemo)
//	rmi                   publish the demo's remote objects (rmi/rmidemo)
func RunChild(ctx context.Context, role string, args []string, stdin io.Reader, stdout io.Writer) error {
	switch role {
	case "produce", "recv", "subscribe", "hold", "echo", "rpc", "rmi":
	default:
		return fmt.Errorf("demo child: unknown role %q (want produce, recv, subscribe, hold, echo, rpc or rmi)", role)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s := os.Getenv(envDeadline); s != "" {
		if ns, err := strconv.ParseInt(s, 10, 64); err == nil {
			var cancelDL context.CancelFunc
			ctx, cancelDL = context.WithDeadline(ctx, time.Unix(0, ns))
			defer cancelDL()
		}
	}
	// EOF on stdin means the parent is done with us, or dead.
	go func() {
		io.Copy(io.Discard, stdin)
		cancel()
	}()

	kv := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		kv[k] = v
	}
	num := func(key string, def int) (int, error) {
		s, ok := kv[key]
		if !ok {
			return def, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("demo child %s: argument %s=%q is not a number", role, key, s)
		}
		return n, nil
	}
	name := kv["name"]
	capacity, err := num("cap", 0)
	if err != nil {
		return err
	}
	n, err := num("n", 0)
	if err != nil {
		return err
	}

	node, err := loft.Open(ctx, loft.Options{})
	if err != nil {
		return err
	}
	defer node.Close()
	out := &lineWriter{w: stdout}

	switch role {
	case "produce":
		s, err := node.Sender(ctx, name)
		if err != nil {
			return err
		}
		defer s.Close()
		out.printf("ready %s", node.ID())
		start := time.Now()
		var buf []byte
		for i := range n {
			buf = strconv.AppendInt(buf[:0], int64(i), 10)
			if err := s.Send(ctx, buf); err != nil {
				return err
			}
		}
		if err := s.Flush(ctx); err != nil {
			return err
		}
		out.printf("sent %d %d", n, time.Since(start).Nanoseconds())
		return nil

	case "recv", "subscribe", "hold":
		opts := loft.ChannelOptions{Capacity: capacity}
		var r *loft.Receiver
		if role == "subscribe" {
			r, err = node.Subscribe(ctx, name, opts)
		} else {
			r, err = node.Receive(ctx, name, opts)
		}
		if err != nil {
			return err
		}
		defer r.Close()
		out.printf("ready %s", node.ID())
		if role == "hold" {
			<-ctx.Done() // messages stay in the buffer, unacknowledged
			return nil
		}
		for m, err := range r.Messages(ctx) {
			if err != nil {
				return quiet(ctx, err)
			}
			out.printf("got %s", m.Data)
		}
		return nil

	case "rpc":
		return quiet(ctx, rpcdemo.Serve(ctx, node, func() { out.printf("ready %s", node.ID()) }))

	case "rmi":
		return quiet(ctx, rmidemo.Serve(ctx, node, func() { out.printf("ready %s", node.ID()) }))

	case "echo":
		out.printf("ready %s", node.ID())
		for m, err := range node.Inbox().Messages(ctx) {
			if err != nil {
				return quiet(ctx, err)
			}
			if err := node.SendTo(ctx, m.From, append([]byte("pong: "), m.Data...)); err != nil {
				return quiet(ctx, err)
			}
		}
		return nil
	}
	panic("unreachable: role checked above")
}

// quiet turns the error of a call cut short because the child was told to
// stop into success.
func quiet(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// lineWriter writes whole lines, one write each, from any goroutine.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}
