package loft

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/loft-ipc/loft/internal/proctest"
)

// The test binary re-executes itself as child processes (see
// internal/proctest).
func TestMain(m *testing.M) {
	if role, args, ok := proctest.Role(); ok {
		if err := runChild(role, args); err != nil {
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

// child is a child process playing a role of runChild.
type child = proctest.Proc

// startChild starts a child playing role with args, its nodes in the
// runtime directory dir.
func startChild(t testing.TB, dir, role string, args ...string) *child {
	t.Helper()
	return proctest.Start(t, role, args, "LOFT_RUNTIME_DIR="+dir)
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
	n, err := Open(ctx, Options{ListenTCP: arg(args, "tcp", ""), NoSharedMemory: arg(args, "noshm", "") != ""})
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
	case "recv", "hold", "subscribe", "step", "recvbatch":
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
		if role == "recvbatch" {
			ms := make([]Message, 16)
			for {
				k, err := r.RecvBatch(ctx, ms)
				if err != nil {
					return err
				}
				for _, m := range ms[:k] {
					printf("got %s %s\n", m.From, m.Data)
				}
			}
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
			id, err := soakID(m.Data)
			if err != nil {
				printf("bad %v\n", err)
				return
			}
			printf("got %s %s\n", m.From, id)
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
			if err := s.Send(ctx, soakPayload(i)); err != nil {
				return err
			}
			if i%25 == 24 {
				if err := s.Flush(ctx); err != nil {
					return err
				}
				printf("flushed %d\n", i)
			}
		}
	case "handle-echo":
		// Echo on channel name to channel reply with Handle and 4 workers.
		r, err := n.Receive(ctx, name, ChannelOptions{Capacity: 16})
		if err != nil {
			return err
		}
		s, err := n.Sender(ctx, arg(args, "reply", "pong"))
		if err != nil {
			return err
		}
		printf("ready %s\n", n.ID())
		return r.Handle(ctx, 4, func(ctx context.Context, m Message) {
			s.Send(ctx, m.Data)
		})
	case "echo2":
		// Echo on channel name to channel reply, and on a raw Unix socket
		// at sock: the two ping-pongs of BenchmarkPingPongVsRaw.
		r, err := n.Receive(ctx, name, ChannelOptions{Capacity: 16})
		if err != nil {
			return err
		}
		l, err := net.Listen("unix", arg(args, "sock", ""))
		if err != nil {
			return err
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 64)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
		s, err := n.Sender(ctx, arg(args, "reply", "pong"))
		if err != nil {
			return err
		}
		printf("ready %s\n", n.ID())
		for {
			m, err := r.Recv(ctx)
			if err != nil || len(m.Data) == 0 {
				return err
			}
			if err := s.Send(ctx, m.Data); err != nil {
				return err
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
