package bench

import (
	"context"
	"fmt"

	"github.com/loft-ipc/loft/rmi"
	"github.com/loft-ipc/loft/rmi/rmidemo"
)

// Remote objects: one plain call, a call with one callback (P to Q to P), a
// chain of 5 pipelined calls and the same 5 calls one after another; the
// server publishes rmidemo's objects in a child process.

func init() {
	RegisterRole("loft-rmi-server", loftRMIServerRole)
	for _, tr := range []string{"shm", "unix"} {
		for _, pat := range []string{"call", "callback", "pipeline5", "sequential5"} {
			Register(Case{System: "loft-rmi", Transport: tr, Pattern: pat, Mode: "blocking", Size: 64, Run: loftRMI(tr, pat)})
		}
	}
}

// loftRMIServerRole: args dir transport.
func loftRMIServerRole(ctx context.Context, args []string) error {
	n, err := loftNode(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	defer n.Close()
	return rmidemo.Serve(ctx, n, func() { ToParent("ready %s", n.ID()) })
}

func loftRMI(transport, pattern string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		dir, cleanup, err := loftDir()
		if err != nil {
			return Result{}, err
		}
		defer cleanup()
		ch, err := env.Spawn(ctx, "loft-rmi-server", dir, transport)
		if err != nil {
			return Result{}, err
		}
		f, err := ch.Expect(ctx, "ready")
		if err != nil {
			return Result{}, err
		}
		if len(f) == 0 {
			return Result{}, fmt.Errorf("rmi server gave no node id")
		}
		n, err := loftNode(ctx, dir, transport)
		if err != nil {
			return Result{}, err
		}
		defer n.Close()
		ep, err := rmi.Open(ctx, n, rmi.Options{})
		if err != nil {
			return Result{}, err
		}
		defer ep.Close()
		jobs, err := rmi.Lookup[rmidemo.Jobs](ctx, ep, f[0], "jobs")
		if err != nil {
			return Result{}, err
		}
		files, err := rmi.Lookup[rmidemo.Dir](ctx, ep, f[0], "files")
		if err != nil {
			return Result{}, err
		}
		var rt func() error
		switch pattern {
		case "call":
			rt = func() error {
				v, err := jobs.Ping(ctx, 1)
				if err == nil && v != 2 {
					err = fmt.Errorf("ping returned %d", v)
				}
				return err
			}
		case "callback":
			l := &rmidemo.Counter{}
			rt = func() error {
				_, err := jobs.Run(ctx, 1, l)
				return err
			}
		case "pipeline5":
			pctx := rmi.Pipeline(ctx)
			rt = func() error { return rmidemo.Chain5(ctx, pctx, files) }
		case "sequential5":
			rt = func() error { return rmidemo.Chain5(ctx, ctx, files) }
		}
		return MeasureRoundTrips(ctx, env.Budget, rt)
	}
}
