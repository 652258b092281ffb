package rmi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/internal/proctest"
)

// The test binary re-executes itself as a child process (see
// internal/proctest) with the loft runtime directory and "noshm" as
// arguments. The child prints "ready <node id>" and serves until its stdin
// closes.
func TestMain(m *testing.M) {
	if _, args, ok := proctest.Role(); ok {
		if err := runChild(args[0], len(args) > 1 && args[1] == "noshm"); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// ---- test interfaces, their proxies (what rmigen would write) and impls.

type Nester interface {
	Nest(ctx context.Context, depth int, other Nester) (int, error)
}

type Counter interface {
	Add(ctx context.Context, n int) (int, error)
}

type File interface {
	Next(ctx context.Context) (File, error)
	Read(ctx context.Context) (string, error)
	Visit(ctx context.Context, l Listener) error
	Stall(ctx context.Context) (File, error)
}

type Listener interface {
	Progress(ctx context.Context, done, total int) error
}

type Svc interface {
	Nester(ctx context.Context) (Nester, error)
	Keep(ctx context.Context, c Counter) error
	Drop(ctx context.Context) error
	Make(ctx context.Context) (Counter, error)
	Exports(ctx context.Context) (int, error)
	Open(ctx context.Context, name string) (File, error)
	Job(ctx context.Context, steps int, l Listener) (int, error)
	Block(ctx context.Context) error
	Forge(ctx context.Context, home string, id []byte) error
	Echo(ctx context.Context, n int) (int, error)
}

type nesterProxy struct{ *Delegate }

func (p nesterProxy) Nest(ctx context.Context, depth int, other Nester) (int, error) {
	return Call1[int](ctx, p.Delegate, "Nest", depth, other)
}

type counterProxy struct{ *Delegate }

func (p counterProxy) Add(ctx context.Context, n int) (int, error) {
	return Call1[int](ctx, p.Delegate, "Add", n)
}

type fileProxy struct{ *Delegate }

func (p fileProxy) Next(ctx context.Context) (File, error) {
	return Call1[File](ctx, p.Delegate, "Next")
}
func (p fileProxy) Read(ctx context.Context) (string, error) {
	return Call1[string](ctx, p.Delegate, "Read")
}
func (p fileProxy) Visit(ctx context.Context, l Listener) error {
	return Call0(ctx, p.Delegate, "Visit", l)
}
func (p fileProxy) Stall(ctx context.Context) (File, error) {
	return Call1[File](ctx, p.Delegate, "Stall")
}

type listenerProxy struct{ *Delegate }

func (p listenerProxy) Progress(ctx context.Context, done, total int) error {
	return Call0(ctx, p.Delegate, "Progress", done, total)
}

type svcProxy struct{ *Delegate }

func (p svcProxy) Nester(ctx context.Context) (Nester, error) {
	return Call1[Nester](ctx, p.Delegate, "Nester")
}
func (p svcProxy) Keep(ctx context.Context, c Counter) error {
	return Call0(ctx, p.Delegate, "Keep", c)
}
func (p svcProxy) Drop(ctx context.Context) error { return Call0(ctx, p.Delegate, "Drop") }
func (p svcProxy) Make(ctx context.Context) (Counter, error) {
	return Call1[Counter](ctx, p.Delegate, "Make")
}
func (p svcProxy) Exports(ctx context.Context) (int, error) {
	return Call1[int](ctx, p.Delegate, "Exports")
}
func (p svcProxy) Open(ctx context.Context, name string) (File, error) {
	return Call1[File](ctx, p.Delegate, "Open", name)
}
func (p svcProxy) Job(ctx context.Context, steps int, l Listener) (int, error) {
	return Call1[int](ctx, p.Delegate, "Job", steps, l)
}
func (p svcProxy) Block(ctx context.Context) error { return Call0(ctx, p.Delegate, "Block") }
func (p svcProxy) Forge(ctx context.Context, home string, id []byte) error {
	return Call0(ctx, p.Delegate, "Forge", home, id)
}
func (p svcProxy) Echo(ctx context.Context, n int) (int, error) {
	return Call1[int](ctx, p.Delegate, "Echo", n)
}

// Nester and Counter are registered without stubs (dispatched by
// reflection), the others with the stubs loft-rmigen would write.
func init() {
	Register(func(d *Delegate) Nester { return nesterProxy{d} })
	Register(func(d *Delegate) Counter { return counterProxy{d} })
	Register(func(d *Delegate) File { return fileProxy{d} }, Stubs[File]{
		"Next": func(ctx context.Context, obj File, c *Served) error {
			r0, err := obj.Next(ctx)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Read": func(ctx context.Context, obj File, c *Served) error {
			r0, err := obj.Read(ctx)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Visit": func(ctx context.Context, obj File, c *Served) error {
			a1, err := Arg[Listener](c)
			if err != nil {
				return err
			}
			return obj.Visit(ctx, a1)
		},
		"Stall": func(ctx context.Context, obj File, c *Served) error {
			r0, err := obj.Stall(ctx)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
	})
	Register(func(d *Delegate) Listener { return listenerProxy{d} }, Stubs[Listener]{
		"Progress": func(ctx context.Context, obj Listener, c *Served) error {
			a1, err := Arg[int](c)
			if err != nil {
				return err
			}
			a2, err := Arg[int](c)
			if err != nil {
				return err
			}
			return obj.Progress(ctx, a1, a2)
		},
	})
	// (Svc: stubs for some methods; the others by reflection.)
	Register(func(d *Delegate) Svc { return svcProxy{d} }, Stubs[Svc]{
		"Keep": func(ctx context.Context, obj Svc, c *Served) error {
			a1, err := Arg[Counter](c)
			if err != nil {
				return err
			}
			return obj.Keep(ctx, a1)
		},
		"Make": func(ctx context.Context, obj Svc, c *Served) error {
			r0, err := obj.Make(ctx)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Open": func(ctx context.Context, obj Svc, c *Served) error {
			a1, err := Arg[string](c)
			if err != nil {
				return err
			}
			r0, err := obj.Open(ctx, a1)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Job": func(ctx context.Context, obj Svc, c *Served) error {
			a1, err := Arg[int](c)
			if err != nil {
				return err
			}
			a2, err := Arg[Listener](c)
			if err != nil {
				return err
			}
			r0, err := obj.Job(ctx, a1, a2)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Block": func(ctx context.Context, obj Svc, c *Served) error {
			return obj.Block(ctx)
		},
		"Forge": func(ctx context.Context, obj Svc, c *Served) error {
			a1, err := Arg[string](c)
			if err != nil {
				return err
			}
			a2, err := Arg[[]byte](c)
			if err != nil {
				return err
			}
			return obj.Forge(ctx, a1, a2)
		},
		"Echo": func(ctx context.Context, obj Svc, c *Served) error {
			a1, err := Arg[int](c)
			if err != nil {
				return err
			}
			r0, err := obj.Echo(ctx, a1)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
	})
}

type nester struct{}

func (n *nester) Nest(ctx context.Context, depth int, other Nester) (int, error) {
	if depth == 0 {
		return 0, nil
	}
	r, err := other.Nest(ctx, depth-1, n)
	return r + 1, err
}

type counter struct{ n atomic.Int64 }

func (c *counter) Add(ctx context.Context, n int) (int, error) { return int(c.n.Add(int64(n))), nil }

type file struct{ name string }

func (f *file) Next(ctx context.Context) (File, error) { return &file{name: f.name + "+"}, nil }
func (f *file) Read(ctx context.Context) (string, error) {
	return "contents of " + f.name, nil
}

// Visit calls l back once.
func (f *file) Visit(ctx context.Context, l Listener) error { return l.Progress(ctx, 1, 1) }

// Stall returns when ctx ends, with its error.
func (f *file) Stall(ctx context.Context) (File, error) { <-ctx.Done(); return nil, ctx.Err() }

type svc struct {
	ep   *Endpoint
	nest *nester
	mu   sync.Mutex
	kept []Counter
}

func (s *svc) Nester(ctx context.Context) (Nester, error) { return s.nest, nil }
func (s *svc) Keep(ctx context.Context, c Counter) error {
	if err := Retain(c); err != nil {
		return err
	}
	if _, err := c.Add(ctx, 1); err != nil {
		return err
	}
	s.mu.Lock()
	s.kept = append(s.kept, c)
	s.mu.Unlock()
	return nil
}
func (s *svc) Drop(ctx context.Context) error {
	s.mu.Lock()
	k := s.kept
	s.kept = nil
	s.mu.Unlock()
	for _, c := range k {
		Release(c)
	}
	return nil
}
func (s *svc) Make(ctx context.Context) (Counter, error) { return &counter{}, nil }
func (s *svc) Exports(ctx context.Context) (int, error)  { return s.ep.Stats().Exports, nil }
func (s *svc) Open(ctx context.Context, name string) (File, error) {
	if name == "" {
		return nil, errors.New("open: empty name")
	}
	return &file{name: name}, nil
}
func (s *svc) Job(ctx context.Context, steps int, l Listener) (int, error) {
	for i := 1; i <= steps; i++ {
		if err := l.Progress(ctx, i, steps); err != nil {
			return i, err
		}
	}
	return steps, nil
}
func (s *svc) Block(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
func (s *svc) Forge(ctx context.Context, home string, id []byte) error {
	p, err := s.ep.peer(home)
	if err != nil {
		return err
	}
	d := newDelegate(s.ep, p, lookupIface(typeOf[Counter]()), objID(id), true)
	_, err = counterProxy{d}.Add(ctx, 1)
	return err
}
func (s *svc) Echo(ctx context.Context, n int) (int, error) { return n, nil }

func runChild(dir string, noShm bool) error {
	ctx := context.Background()
	if f := os.Getenv("LOFT_CHILD_CPUPROFILE"); f != "" { // for profiling the server side of the benchmarks
		out, err := os.Create(f)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(out)
		defer pprof.StopCPUProfile()
	}
	node, err := loft.Open(ctx, loft.Options{Dir: dir, NoSharedMemory: noShm})
	if err != nil {
		return err
	}
	defer node.Close()
	ep, err := Open(ctx, node, Options{})
	if err != nil {
		return err
	}
	defer ep.Close()
	if err := Publish[Svc](ep, "svc", &svc{ep: ep, nest: &nester{}}); err != nil {
		return err
	}
	srv, err := serveRefs(ctx, node, ep)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Printf("ready %s\n", node.ID())
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// ---- helpers

// child is a child process serving the test objects (runChild).
type child struct {
	*proctest.Proc
	id string // its node
}

// startChild starts a child with its node in the runtime directory dir,
// over Unix sockets only if noShm. It ends when the test does (its stdin
// closes).
func startChild(t testing.TB, dir string, noShm bool) *child {
	t.Helper()
	args := []string{dir}
	if noShm {
		args = append(args, "noshm")
	}
	p := proctest.Start(t, "rmi", args)
	p.Grace = 20 * time.Second
	return &child{Proc: p, id: p.Expect("ready", 20*time.Second)}
}

func (c *child) kill() { c.Kill() }

type env struct {
	dir  string
	node *loft.Node
	ep   *Endpoint
}

func newEnv(t testing.TB, noShm bool) *env {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rt")
	node, ep := openEndpoint(t, dir, noShm)
	return &env{dir: dir, node: node, ep: ep}
}

// another opens a second node of this process in e's runtime directory,
// with an endpoint; both close when the test ends.
func (e *env) another(t testing.TB) (*loft.Node, *Endpoint) {
	t.Helper()
	return openEndpoint(t, e.dir, false)
}

// openEndpoint opens a node in the runtime directory dir and an endpoint
// on it; both close when the test ends.
func openEndpoint(t testing.TB, dir string, noShm bool) (*loft.Node, *Endpoint) {
	t.Helper()
	node, err := loft.Open(context.Background(), loft.Options{Dir: dir, NoSharedMemory: noShm})
	if err != nil {
		t.Fatal(err)
	}
	ep, err := Open(context.Background(), node, Options{})
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ep.Close()
		node.Close()
	})
	return node, ep
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
