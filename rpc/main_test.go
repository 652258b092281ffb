package rpc_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/internal/proctest"
	"github.com/loft-ipc/loft/rpc"
	"github.com/loft-ipc/loft/rpc/rpcbench"
)

// The test binary re-executes itself as child processes (see
// internal/proctest). A child talks to the parent in lines on its stdout
// and ends when its stdin closes.
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

// Types of the test service "calc".
type (
	AddReq struct {
		A, B int
	}
	AddResp struct {
		Sum int
	}
	EchoMsg struct {
		Data []byte
		Text string
	}
	SleepReq struct {
		ID int
		Ms int
	}
	BlockReq struct {
		Tag string
	}
)

var outMu sync.Mutex

// say writes one line to the parent.
func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func nodeOptions(dir, transport string) loft.Options {
	o := loft.Options{Dir: dir}
	switch transport {
	case "unix":
		o.NoSharedMemory = true
	case "tcp":
		o.NoSharedMemory = true
		o.ListenTCP = "127.0.0.1:0"
	}
	return o
}

func tcpAddr(n *loft.Node) string {
	for _, a := range n.Addrs() {
		if strings.HasPrefix(a, "tcp://") {
			return a
		}
	}
	return "-"
}

// registerCalc registers the methods of the test service.
func registerCalc(s *rpc.Server) error {
	errs := []error{
		rpc.Register(s, "Add", func(ctx context.Context, r AddReq) (AddResp, error) {
			return AddResp{Sum: r.A + r.B}, nil
		}),
		rpc.Register(s, "Echo", func(ctx context.Context, m EchoMsg) (EchoMsg, error) {
			return m, nil
		}),
		rpc.Register(s, "Sleep", func(ctx context.Context, r SleepReq) (int, error) {
			t := time.NewTimer(time.Duration(r.Ms) * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return r.ID, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}),
		rpc.Register(s, "Block", func(ctx context.Context, r BlockReq) (string, error) {
			_, hasDL := ctx.Deadline()
			say("started %s %v", r.Tag, hasDL)
			<-ctx.Done()
			say("ended %s %v", r.Tag, ctx.Err())
			return "", ctx.Err()
		}),
		rpc.Register(s, "Panic", func(ctx context.Context, r BlockReq) (string, error) {
			panic("boom: " + r.Tag)
		}),
		rpc.Register(s, "Fail", func(ctx context.Context, r BlockReq) (string, error) {
			return "", rpc.Errorf(rpc.NotFound, "no %s here", r.Tag)
		}),
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func runChild(role string, args []string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	switch role {
	case "server": // args: transport service
		n, err := loft.Open(ctx, nodeOptions(os.Getenv("LOFT_RUNTIME_DIR"), args[0]))
		if err != nil {
			return err
		}
		defer n.Close()
		s, err := rpc.NewServer(n, args[1], rpc.ServerOptions{})
		if err != nil {
			return err
		}
		if err := registerCalc(s); err != nil {
			return err
		}
		if err := s.Start(ctx); err != nil {
			return err
		}
		say("ready %s %s", n.ID(), tcpAddr(n))
		<-ctx.Done()
		return s.Close()
	case "bench-loft": // args: transport
		n, err := loft.Open(ctx, nodeOptions(os.Getenv("LOFT_RUNTIME_DIR"), args[0]))
		if err != nil {
			return err
		}
		defer n.Close()
		s, err := rpcbench.StartLoft(ctx, n)
		if err != nil {
			return err
		}
		say("ready %s %s", n.ID(), tcpAddr(n))
		<-ctx.Done()
		return s.Close()
	case "bench-grpc", "bench-netrpc": // args: network address
		l, err := net.Listen(args[0], args[1])
		if err != nil {
			return err
		}
		defer l.Close()
		if role == "bench-grpc" {
			defer rpcbench.ServeGRPC(l).Stop()
		} else {
			rpcbench.ServeNetRPC(l)
		}
		say("ready %s", l.Addr())
		<-ctx.Done()
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

func runtimeDir(t testing.TB) string {
	return filepath.Join(t.TempDir(), "rt")
}

// child is a child process playing a role of runChild.
type child struct{ *proctest.Proc }

// startChild starts a child playing role with args, its nodes in the
// runtime directory dir. It ends when the test does (its stdin closes).
func startChild(t testing.TB, dir, role string, args ...string) child {
	t.Helper()
	p := proctest.Start(t, role, args, "LOFT_RUNTIME_DIR="+dir)
	p.Grace = 5 * time.Second
	return child{p}
}

// expect returns the fields after prefix of the next line starting with
// prefix; other lines are skipped. The timeout only guards against a hung
// test.
func (c child) expect(prefix string) []string {
	return c.ExpectFields(prefix, 20*time.Second)
}

// startServer starts a server child and returns it with its node id and
// TCP address ("-" if none).
func startServer(t testing.TB, dir, transport, service string) (child, string, string) {
	t.Helper()
	c := startChild(t, dir, "server", transport, service)
	f := c.expect("ready")
	return c, f[0], f[1]
}

// openNode opens a node closed at the end of the test.
func openNode(t testing.TB, dir, transport string) *loft.Node {
	t.Helper()
	n, err := loft.Open(context.Background(), nodeOptions(dir, transport))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// dial dials service over transport, by URL for tcp.
func dial(t testing.TB, n *loft.Node, transport, service, tcp string, opts rpc.ClientOptions) *rpc.Client {
	t.Helper()
	target := service
	if transport == "tcp" {
		target = tcp + "/" + service
	}
	c, err := rpc.Dial(context.Background(), n, target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
