package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/loft-ipc/loft/rpc"
	"github.com/loft-ipc/loft/rpc/rpcbench"
)

// RPC cases: loft RPC against gRPC-go unary calls and Go's net/rpc, each
// echoing a payload of the case's size, over one connection, with 1 and 64
// calls in flight. The server runs in a child process, the client in the
// parent. msgs_per_s counts calls per second; p50 and p99 are call
// latencies.

// rpcInflight are the numbers of calls in flight measured.
var rpcInflight = []int{1, 64}

func init() {
	RegisterRole("rpc-loft-server", rpcLoftServerRole)
	RegisterRole("rpc-grpc-server", rpcGRPCServerRole)
	RegisterRole("rpc-netrpc-server", rpcNetRPCServerRole)
	type sys struct {
		name       string
		transports []string
	}
	for _, s := range []sys{
		{"loft-rpc", []string{"unix", "tcp", "shm", "shm-poll"}},
		{"grpc", []string{"unix", "tcp"}},
		{"net/rpc", []string{"unix", "tcp"}},
	} {
		for _, tr := range s.transports {
			for _, inflight := range rpcInflight {
				c := Case{System: s.name, Transport: tr, Pattern: "call", Mode: "blocking", MaxSize: 4096, Inflight: inflight}
				if tr == "shm-poll" {
					// Shared memory with busy polling (loft.Options.BusyPoll).
					c.Transport, c.Mode, c.Pin = "shm", "polling", true
				}
				if c.Transport == "shm" {
					c.RawTransport = "unix"
				}
				c.Run = rpcCase(s.name, tr, inflight)
				Register(c)
			}
		}
	}
}

// rpcLoftServerRole: args dir transport ("unix", "tcp", "shm" or
// "shm-poll"). Serves the loft echo service.
func rpcLoftServerRole(ctx context.Context, args []string) error {
	n, err := loftNode(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	defer n.Close()
	s, err := rpcbench.StartLoft(ctx, n)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := ToParent("ready %s", tcpAddr(n)+" "); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// rpcListen listens on a fresh Unix socket path or a TCP loopback port.
func rpcListen(transport string) (net.Listener, func(), error) {
	if transport == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		return l, func() {}, err
	}
	d, err := os.MkdirTemp("", "loft-bench-rpc-")
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("unix", filepath.Join(d, "s"))
	return l, func() { os.RemoveAll(d) }, err
}

// rpcGRPCServerRole: args transport. Serves the gRPC echo service.
func rpcGRPCServerRole(ctx context.Context, args []string) error {
	l, cleanup, err := rpcListen(args[0])
	if err != nil {
		return err
	}
	defer cleanup()
	s := rpcbench.ServeGRPC(l)
	defer s.Stop()
	if err := ToParent("ready %s", l.Addr()); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// rpcNetRPCServerRole: args transport. Serves the net/rpc echo service.
func rpcNetRPCServerRole(ctx context.Context, args []string) error {
	l, cleanup, err := rpcListen(args[0])
	if err != nil {
		return err
	}
	defer cleanup()
	defer l.Close()
	rpcbench.ServeNetRPC(l)
	if err := ToParent("ready %s", l.Addr()); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// rpcCase returns the Run function of one RPC case.
func rpcCase(system, transport string, inflight int) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		call, cleanup, err := rpcCaller(ctx, env, system, transport)
		if cleanup != nil {
			defer cleanup()
		}
		if err != nil {
			return Result{}, err
		}
		payload := make([]byte, env.Size)
		for i := range payload {
			payload[i] = byte(i)
		}
		// The first call connects.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = call(cctx, payload)
		cancel()
		if err != nil {
			return Result{}, fmt.Errorf("first call: %w", err)
		}
		if inflight <= 1 {
			return MeasureRoundTrips(ctx, env.Budget, func() error { return call(ctx, payload) })
		}
		return measureInflight(ctx, env.Budget, inflight, func() error { return call(ctx, payload) })
	}
}

// rpcCaller starts the server child of a case and returns a function that
// makes one echo call and checks the reply's length.
func rpcCaller(ctx context.Context, env Env, system, transport string) (func(context.Context, []byte) error, func(), error) {
	check := func(got, want int) error {
		if got != want {
			return fmt.Errorf("echo of %d bytes for %d", got, want)
		}
		return nil
	}
	switch system {
	case "loft-rpc":
		dir, rmdir, err := loftDir()
		if err != nil {
			return nil, nil, err
		}
		ch, err := env.Spawn(ctx, "rpc-loft-server", dir, transport)
		if err != nil {
			return nil, rmdir, err
		}
		f, err := ch.Expect(ctx, "ready")
		if err != nil {
			return nil, rmdir, err
		}
		n, err := loftNode(ctx, dir, transport)
		if err != nil {
			return nil, rmdir, err
		}
		addr := rpcbench.Service
		if transport == "tcp" && len(f) > 0 {
			addr = f[0] + "/" + rpcbench.Service
		}
		c, err := rpc.Dial(ctx, n, addr, rpc.ClientOptions{})
		if err != nil {
			n.Close()
			return nil, rmdir, err
		}
		cleanup := func() { c.Close(); n.Close(); rmdir() }
		return func(ctx context.Context, p []byte) error {
			r, err := rpcbench.CallLoft(ctx, c, p)
			if err != nil {
				return err
			}
			return check(len(r), len(p))
		}, cleanup, nil
	case "grpc", "net/rpc":
		role := "rpc-grpc-server"
		if system == "net/rpc" {
			role = "rpc-netrpc-server"
		}
		ch, err := env.Spawn(ctx, role, transport)
		if err != nil {
			return nil, nil, err
		}
		f, err := ch.Expect(ctx, "ready")
		if err != nil {
			return nil, nil, err
		}
		if len(f) != 1 {
			return nil, nil, fmt.Errorf("bad ready line %q", f)
		}
		if system == "net/rpc" {
			c, err := rpcbench.DialNetRPC(transport, f[0])
			if err != nil {
				return nil, nil, err
			}
			return func(_ context.Context, p []byte) error {
				var r []byte
				if err := c.Call("Echo.Echo", p, &r); err != nil {
					return err
				}
				return check(len(r), len(p))
			}, func() { c.Close() }, nil
		}
		target := "passthrough:///" + f[0]
		if transport == "unix" {
			target = "unix://" + f[0]
		}
		c, err := rpcbench.DialGRPC(target)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, p []byte) error {
			var r []byte
			if err := c.Call(ctx, p, &r); err != nil {
				return err
			}
			return check(len(r), len(p))
		}, func() { c.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown RPC system %q", system)
}

// measureInflight keeps n calls in flight (n goroutines, each calling in a
// loop), first for a short warm-up, then for about budget. Every call's
// latency goes into an HDR histogram; MsgsPerS counts calls per second.
func measureInflight(ctx context.Context, budget time.Duration, n int, call func() error) (Result, error) {
	warm := min(budget/10, 100*time.Millisecond)
	start := time.Now()
	measureFrom := start.Add(warm)
	stopAt := measureFrom.Add(budget)
	var (
		mu    sync.Mutex
		total = hdrhistogram.New(1, int64(time.Minute), 3)
		calls int64
		first error
		last  time.Time
		wg    sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hdrhistogram.New(1, int64(time.Minute), 3)
			var k int64
			var err error
			var t1 time.Time
			for {
				t0 := time.Now()
				if t0.After(stopAt) {
					break
				}
				if err = call(); err != nil {
					break
				}
				t1 = time.Now()
				if t0.After(measureFrom) {
					h.RecordValue(max(int64(t1.Sub(t0)), 1))
					k++
				}
				if k&63 == 0 && ctx.Err() != nil {
					err = context.Cause(ctx)
					break
				}
			}
			mu.Lock()
			defer mu.Unlock()
			total.Merge(h)
			calls += k
			if t1.After(last) {
				last = t1
			}
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return Result{}, first
	}
	el := last.Sub(measureFrom)
	if calls == 0 || el <= 0 {
		return Result{}, fmt.Errorf("no calls measured")
	}
	return Result{
		Msgs:     calls,
		MsgsPerS: float64(calls) / el.Seconds(),
		P50ns:    total.ValueAtQuantile(50),
		P99ns:    total.ValueAtQuantile(99),
	}, nil
}
