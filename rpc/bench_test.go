package rpc_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/loft-ipc/loft/rpc"
	"github.com/loft-ipc/loft/rpc/rpcbench"
)

// The benchmarks run the server in a child process, so the allocations
// reported (-benchmem) are the client's: the calling goroutine's plus the
// client node's reader and writer.

var benchSystems = []string{"loft/shm", "loft/unix", "loft/tcp", "grpc/unix", "grpc/tcp", "netrpc/unix", "netrpc/tcp"}

// benchCaller starts the server of system ("loft/shm", "grpc/unix", ...)
// and returns a function making one echo call.
func benchCaller(b *testing.B, system string) func(ctx context.Context, payload []byte) error {
	sys, tr, _ := strings.Cut(system, "/")
	dir := runtimeDir(b)
	switch sys {
	case "loft":
		srv := startChild(b, dir, "bench-loft", tr)
		f := srv.expect("ready")
		n := openNode(b, dir, tr)
		c := dial(b, n, tr, rpcbench.Service, f[1], rpc.ClientOptions{})
		return func(ctx context.Context, p []byte) error {
			r, err := rpcbench.CallLoft(ctx, c, p)
			if err == nil && len(r) != len(p) {
				err = fmt.Errorf("echo of %d bytes for %d", len(r), len(p))
			}
			return err
		}
	case "grpc", "netrpc":
		network, addr := tr, "127.0.0.1:0"
		if tr == "unix" {
			addr = filepath.Join(b.TempDir(), "s.sock")
		}
		srv := startChild(b, dir, "bench-"+sys, network, addr)
		addr = srv.expect("ready")[0]
		if sys == "netrpc" {
			c, err := rpcbench.DialNetRPC(network, addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			return func(ctx context.Context, p []byte) error {
				var r []byte
				if err := c.Call("Echo.Echo", p, &r); err != nil {
					return err
				}
				if len(r) != len(p) {
					return fmt.Errorf("echo of %d bytes for %d", len(r), len(p))
				}
				return nil
			}
		}
		target := "passthrough:///" + addr
		if tr == "unix" {
			target = "unix://" + addr
		}
		c, err := rpcbench.DialGRPC(target)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return func(ctx context.Context, p []byte) error {
			var r []byte
			if err := c.Call(ctx, p, &r); err != nil {
				return err
			}
			if !bytes.Equal(r, p) {
				return fmt.Errorf("echo of %d bytes for %d", len(r), len(p))
			}
			return nil
		}
	}
	b.Fatalf("unknown system %q", system)
	return nil
}

// BenchmarkCall makes one call at a time.
func BenchmarkCall(b *testing.B) {
	for _, sys := range benchSystems {
		for _, size := range []int{64, 4096} {
			b.Run(fmt.Sprintf("%s/%d", sys, size), func(b *testing.B) {
				call := benchCaller(b, sys)
				ctx := context.Background()
				p := bytes.Repeat([]byte{'x'}, size)
				if err := call(ctx, p); err != nil { // warm up: connect
					b.Fatal(err)
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if err := call(ctx, p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkCall64 keeps 64 calls in flight on one client (connection).
func BenchmarkCall64(b *testing.B) {
	for _, sys := range benchSystems {
		for _, size := range []int{64, 4096} {
			b.Run(fmt.Sprintf("%s/%d", sys, size), func(b *testing.B) {
				call := benchCaller(b, sys)
				ctx := context.Background()
				p := bytes.Repeat([]byte{'x'}, size)
				if err := call(ctx, p); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := call(ctx, p); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkCallDeadline makes one call at a time with a context that has
// a deadline (which travels with each call, and which the client watches).
func BenchmarkCallDeadline(b *testing.B) {
	for _, sys := range []string{"loft/shm", "loft/unix", "grpc/unix"} {
		b.Run(sys+"/64", func(b *testing.B) {
			call := benchCaller(b, sys)
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			p := bytes.Repeat([]byte{'x'}, 64)
			if err := call(ctx, p); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(64)
			b.ReportAllocs()
			for b.Loop() {
				if err := call(ctx, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
