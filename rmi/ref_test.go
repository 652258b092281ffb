package rmi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

// The child's rpc service "refs" (serveRefs): remote objects passed as
// arguments and results of rpc calls, as Refs.

type runReq struct {
	Steps int
	L     Ref
}

type useReq struct{ C Ref }

// serveRefs starts the child's rpc service on node, whose rmi endpoint is
// ep.
func serveRefs(ctx context.Context, node *loft.Node, ep *Endpoint) (*rpc.Server, error) {
	srv, err := rpc.NewServer(node, "refs", rpc.ServerOptions{})
	if err != nil {
		return nil, err
	}
	// Run calls the listener it is given Steps times.
	rpc.Register(srv, "Run", func(ctx context.Context, req runReq) (int, error) {
		l, err := ImportRef[Listener](ep, req.L)
		if err != nil {
			return 0, err
		}
		defer Release(l)
		for i := 1; i <= req.Steps; i++ {
			if err := l.Progress(ctx, i, req.Steps); err != nil {
				return i, err
			}
		}
		return req.Steps, nil
	})
	// Make returns a new counter of this node, for the caller.
	rpc.Register(srv, "Make", func(ctx context.Context, _ struct{}) (Ref, error) {
		ci, _ := rpc.CallInfoFrom(ctx)
		return ExportRef[Counter](ep, ci.Node, &counter{})
	})
	// Use adds 1 to the counter it is given.
	rpc.Register(srv, "Use", func(ctx context.Context, req useReq) (int, error) {
		c, err := ImportRef[Counter](ep, req.C)
		if err != nil {
			return 0, err
		}
		defer Release(c)
		return c.Add(ctx, 1)
	})
	return srv, srv.Start(ctx)
}

// dialRefs is an rpc client of node for the child's "refs" service,
// closed when the test ends.
func dialRefs(t *testing.T, ctx context.Context, node *loft.Node) *rpc.Client {
	t.Helper()
	cli, err := rpc.Dial(ctx, node, "refs", rpc.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestProcRefOverRPC: a listener of this process passed as an argument of
// an rpc call is called back from the child; a counter of the child
// returned as an rpc result is called from here; all exports are gone
// once the delegates are released.
func TestProcRefOverRPC(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, false)
	c := startChild(t, e.dir, false)
	s := lookupSvc(t, ctx, e, c)
	defer Release(s)
	cli := dialRefs(t, ctx, e.node)

	// Argument: the child calls our listener back, 3 times.
	l := &progress{}
	ref, err := ExportRef[Listener](e.ep, c.id, l)
	if err != nil {
		t.Fatal(err)
	}
	n, err := rpc.Call[runReq, int](ctx, cli, "Run", runReq{Steps: 3, L: ref})
	if err != nil || n != 3 {
		t.Fatalf("Run: %d, %v", n, err)
	}
	l.mu.Lock()
	seen := fmt.Sprint(l.seen)
	l.mu.Unlock()
	if seen != "[1 2 3]" {
		t.Fatalf("the listener saw %s, want [1 2 3]", seen)
	}

	// Result: a counter of the child, called from here.
	cref, err := rpc.Call[struct{}, Ref](ctx, cli, "Make", struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := ImportRef[Counter](e.ep, cref)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ctr.Add(ctx, 5); err != nil || v != 5 {
		t.Fatalf("Add: %d, %v", v, err)
	}
	if k, err := s.Exports(ctx); err != nil || k != 2 {
		t.Fatalf("the child exports %d objects (%v), want 2: svc and the counter", k, err)
	}
	Release(ctr)
	// The release rides on this call; the child's release of our
	// listener (when Run returned) rides on its reply.
	if k, err := s.Exports(ctx); err != nil || k != 1 {
		t.Fatalf("after Release the child exports %d objects (%v), want 1: svc", k, err)
	}
	if k := e.ep.ExportsTo(c.id); k != 0 {
		t.Fatalf("after Run we export %d objects to the child, want 0", k)
	}
}

// TestProcRefRefused: a Ref with a made-up id, one exported to another
// node, one of another interface, and one of this node's own object are
// refused.
func TestProcRefRefused(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, false)
	c := startChild(t, e.dir, false)

	// Made up: the child never exported it.
	id := make([]byte, idLen)
	rand.Read(id)
	forged, err := ImportRef[Counter](e.ep, Ref{Home: c.id, ID: id, Iface: lookupIface(typeOf[Counter]()).name})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := forged.Add(ctx, 1); !errors.Is(err, ErrNoSuchObject) {
		t.Fatalf("a made-up Ref: %v, want ErrNoSuchObject", err)
	}
	Release(forged)

	// Exported to another node: a second node of this process gets a
	// counter from the child, and this node tries to use it.
	n2, ep2 := e.another(t)
	cli2 := dialRefs(t, ctx, n2)
	theirs, err := rpc.Call[struct{}, Ref](ctx, cli2, "Make", struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	stolen, err := ImportRef[Counter](e.ep, theirs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stolen.Add(ctx, 1); !errors.Is(err, ErrForeignRef) {
		t.Fatalf("a Ref exported to another node: %v, want ErrForeignRef", err)
	}
	Release(stolen)
	// Its rightful holder can use it.
	mine, err := ImportRef[Counter](ep2, theirs)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := mine.Add(ctx, 2); err != nil || v != 2 {
		t.Fatalf("the node the Ref was exported to: %d, %v", v, err)
	}
	Release(mine)

	// Another interface, and this node's own object.
	if _, err := ImportRef[Listener](e.ep, theirs); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("a Counter Ref imported as a Listener: %v, want ErrBadMessage", err)
	}
	own, err := ExportRef[Counter](e.ep, c.id, &counter{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ImportRef[Counter](e.ep, own); !errors.Is(err, ErrForeignRef) {
		t.Fatalf("a Ref of this node's own object: %v, want ErrForeignRef", err)
	}
	// Nor to this node itself.
	if _, err := ExportRef[Counter](e.ep, e.node.ID(), &counter{}); err == nil {
		t.Fatal("ExportRef to the endpoint's own node succeeded")
	}
	// A delegate cannot be exported as a Ref.
	if _, err := ExportRef[Counter](e.ep, c.id, mine); err == nil {
		t.Fatal("ExportRef of a delegate succeeded")
	}
}
