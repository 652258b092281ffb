package bench_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/loft-ipc/loft/bench"
)

// A one-way case whose receiving side runs in a child process. In real code
// both registrations go in an init function, so that the re-executed child
// (which calls bench.MaybeRunChild first thing in main) knows the role.
func ExampleRegister() {
	// The child: listen, say where, receive until the sender closes, then
	// report the count and the time from the first message to the last.
	bench.RegisterRole("example-recv", func(ctx context.Context, args []string) error {
		size, err := strconv.Atoi(args[0])
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		if err := bench.ToParent("ready %s", ln.Addr()); err != nil {
			return err
		}
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, size)
		var n int64
		var first time.Time
		for {
			if _, err := io.ReadFull(conn, buf); err != nil {
				break
			}
			if n == 0 {
				first = time.Now()
			}
			n++
		}
		return bench.ToParent("done %d %d", n, time.Since(first).Nanoseconds())
	})

	// The parent: spawn the child, send for the budget, read the report.
	bench.Register(bench.Case{
		System: "example", Transport: "tcp", Pattern: "oneway", Mode: "blocking",
		Run: func(ctx context.Context, env bench.Env) (bench.Result, error) {
			ch, err := env.Spawn(ctx, "example-recv", strconv.Itoa(env.Size))
			if err != nil {
				return bench.Result{}, err
			}
			// The harness kills and reaps ch when Run returns; no defer needed.
			f, err := ch.Expect(ctx, "ready")
			if err != nil {
				return bench.Result{}, err
			}
			conn, err := net.Dial("tcp", f[0])
			if err != nil {
				return bench.Result{}, err
			}
			msg := make([]byte, env.Size)
			for start := time.Now(); time.Since(start) < env.Budget; {
				if _, err := conn.Write(msg); err != nil {
					return bench.Result{}, err
				}
			}
			conn.Close()
			f, err = ch.Expect(ctx, "done")
			if err != nil {
				return bench.Result{}, err
			}
			n, _ := strconv.ParseInt(f[0], 10, 64)
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			if n < 2 || ns <= 0 {
				return bench.Result{}, fmt.Errorf("child received %d messages", n)
			}
			return bench.Result{Msgs: n, MsgsPerS: float64(n-1) / (float64(ns) / 1e9)}, nil
		},
	})
}

// A ping-pong case: MeasureRoundTrips runs the warm-up, the timing and the
// histogram; the case supplies one round trip.
func ExampleMeasureRoundTrips() {
	bench.Register(bench.Case{
		System: "example", Transport: "inproc", Pattern: "pingpong", Mode: "blocking",
		Run: func(ctx context.Context, env bench.Env) (bench.Result, error) {
			ping, pong := make(chan []byte), make(chan []byte)
			go func() {
				for b := range ping {
					pong <- b
				}
			}()
			defer close(ping)
			msg := make([]byte, env.Size)
			return bench.MeasureRoundTrips(ctx, env.Budget, func() error {
				ping <- msg
				<-pong
				return nil
			})
		},
	})
}
