package main

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/cmd/loft-rmigen/testdata/basic"
	"github.com/loft-ipc/loft/cmd/loft-rmigen/testdata/foreign"
	"github.com/loft-ipc/loft/rmi"
)

// The implementations of testdata/basic's interfaces: ordinary Go.

type store struct {
	mu   sync.Mutex
	data map[string][]byte
}

func (s *store) Get(ctx context.Context, key string) (basic.Item, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return item{key, s.data[key]}, nil
}

func (s *store) Put(ctx context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = value
	return nil
}

func (s *store) Stat(ctx context.Context) (int, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var size int64
	for _, v := range s.data {
		size += int64(len(v))
	}
	return len(s.data), size, nil
}

func (s *store) Watch(ctx context.Context, w basic.Watcher, l basic.Logger) error {
	if err := l.Log(ctx, "watching"); err != nil {
		return err
	}
	return w.Changed(ctx, "k")
}

func (s *store) Move(ctx context.Context, p basic.Point, m map[string][]*basic.Point) (basic.Point, error) {
	for _, ps := range m {
		for _, q := range ps {
			p.X += q.X
			p.Y += q.Y
		}
	}
	return p, nil
}

func (s *store) Keys(ctx context.Context, prefix, suffix string, limit int) ([]string, error) {
	return []string{prefix + "1" + suffix, prefix + "2" + suffix}[:limit], nil
}

func (s *store) Swap(ctx context.Context, a, b basic.Item) (basic.Item, basic.Item, error) {
	return b, a, nil
}

func (s *store) Clock(ctx context.Context, c foreign.Clock) (time.Time, error) { return c.Now(ctx) }

func (s *store) Echo(ctx context.Context, v any, m map[string]any) (any, error) { return v, nil }

type item struct {
	name  string
	value []byte
}

func (i item) Name(ctx context.Context) (string, error)  { return i.name, nil }
func (i item) Value(ctx context.Context) ([]byte, error) { return i.value, nil }
func (i item) String() string                            { return i.name }

type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) Changed(ctx context.Context, key string) error { return r.Log(ctx, "changed "+key) }

func (r *recorder) Log(ctx context.Context, line string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	return nil
}

type clock struct{ t time.Time }

func (c clock) Now(ctx context.Context) (time.Time, error) { return c.t, nil }

// TestRuntime calls every method of the golden proxies between two nodes
// of this process: values, remote results and parameters (one of another
// package, one registered in another file), callbacks, two results.
func TestRuntime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "rt")
	open := func() (*loft.Node, *rmi.Endpoint) {
		n, err := loft.Open(ctx, loft.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		ep, err := rmi.Open(ctx, n, rmi.Options{})
		if err != nil {
			n.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { ep.Close(); n.Close() })
		return n, ep
	}
	home, hep := open()
	_, cep := open()
	if err := rmi.Publish[basic.Store](hep, "store", &store{data: map[string][]byte{}}); err != nil {
		t.Fatal(err)
	}
	s, err := rmi.Lookup[basic.Store](ctx, cep, home.ID(), "store")
	if err != nil {
		t.Fatal(err)
	}
	if rmi.DelegateOf(s) == nil {
		t.Fatalf("Lookup returned %T, not a proxy", s)
	}
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	check("Put", s.Put(ctx, "a", []byte("xy")))
	n, size, err := s.Stat(ctx)
	check("Stat", err)
	if n != 1 || size != 2 {
		t.Errorf("Stat = %d, %d", n, size)
	}
	it, err := s.Get(ctx, "a")
	check("Get", err)
	name, err := it.Name(ctx) // a method of the embedded interface
	check("Name", err)
	v, err := it.Value(ctx)
	check("Value", err)
	if name != "a" || string(v) != "xy" {
		t.Errorf("item %q = %q", name, v)
	}
	it2, err := s.Get(ctx, "b")
	check("Get", err)
	x, y, err := s.Swap(ctx, it, it2)
	check("Swap", err)
	xn, _ := x.Name(ctx)
	yn, _ := y.Name(ctx)
	if xn != "b" || yn != "a" {
		t.Errorf("Swap = %s, %s", xn, yn)
	}
	for _, r := range []any{it, it2, x, y} {
		rmi.Release(r)
	}
	// Two objects: rmi exports one object under one interface per peer
	// (passing rec as both Watcher and Logger fails with no-such-method).
	rec, log := &recorder{}, &recorder{}
	check("Watch", s.Watch(ctx, rec, log))
	if !slices.Equal(log.lines, []string{"watching"}) || !slices.Equal(rec.lines, []string{"changed k"}) {
		t.Errorf("callbacks: %q, %q", log.lines, rec.lines)
	}
	p, err := s.Move(ctx, basic.Point{X: 1, Y: 2, Label: "p"}, map[string][]*basic.Point{"m": {{X: 10, Y: 20}, {X: 100}}})
	check("Move", err)
	if p.X != 111 || p.Y != 22 || p.Label != "p" {
		t.Errorf("Move = %+v", p)
	}
	keys, err := s.Keys(ctx, "<", ">", 2)
	check("Keys", err)
	if !slices.Equal(keys, []string{"<1>", "<2>"}) {
		t.Errorf("Keys = %q", keys)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now, err := s.Clock(ctx, clock{at})
	check("Clock", err)
	if !now.Equal(at) {
		t.Errorf("Clock = %v", now)
	}
	e, err := s.Echo(ctx, "hello", map[string]any{"k": 1})
	check("Echo", err)
	if e != "hello" {
		t.Errorf("Echo = %#v", e)
	}
}
