package rmi

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// Stubbed has methods dispatched by stubs, one (Plain) by reflection, and
// one (Short) whose stub forgets its result.
type Stubbed interface {
	Pair(ctx context.Context, s string, c Counter) (string, Counter, error)
	Fail(ctx context.Context) (int, error)
	Short(ctx context.Context) (int, error)
	Plain(ctx context.Context, n int) (int, error)
}

type stubbedProxy struct{ *Delegate }

func (p stubbedProxy) Pair(ctx context.Context, s string, c Counter) (string, Counter, error) {
	return Call2[string, Counter](ctx, p.Delegate, "Pair", s, c)
}
func (p stubbedProxy) Fail(ctx context.Context) (int, error) {
	return Call1[int](ctx, p.Delegate, "Fail")
}
func (p stubbedProxy) Short(ctx context.Context) (int, error) {
	return Call1[int](ctx, p.Delegate, "Short")
}
func (p stubbedProxy) Plain(ctx context.Context, n int) (int, error) {
	return Call1[int](ctx, p.Delegate, "Plain", n)
}

// stubRuns counts the calls the stubs of Stubbed dispatched.
var stubRuns atomic.Int64

func init() {
	Register(func(d *Delegate) Stubbed { return stubbedProxy{d} }, Stubs[Stubbed]{
		"Pair": func(ctx context.Context, obj Stubbed, c *Served) error {
			stubRuns.Add(1)
			a1, err := Arg[string](c)
			if err != nil {
				return err
			}
			a2, err := Arg[Counter](c)
			if err != nil {
				return err
			}
			r0, r1, err := obj.Pair(ctx, a1, a2)
			if err != nil {
				return err
			}
			if err := Result(c, r0); err != nil {
				return err
			}
			return Result(c, r1)
		},
		"Fail": func(ctx context.Context, obj Stubbed, c *Served) error {
			stubRuns.Add(1)
			r0, err := obj.Fail(ctx)
			if err != nil {
				return err
			}
			return Result(c, r0)
		},
		"Short": func(ctx context.Context, obj Stubbed, c *Served) error {
			stubRuns.Add(1)
			_, err := obj.Short(ctx)
			return err // (no Result: the call fails)
		},
	})
}

type stubbed struct{}

func (s *stubbed) Pair(ctx context.Context, str string, c Counter) (string, Counter, error) {
	if _, err := c.Add(ctx, len(str)); err != nil {
		return "", nil, err
	}
	return strings.ToUpper(str), &counter{}, nil
}
func (s *stubbed) Fail(ctx context.Context) (int, error)         { return 0, errors.New("failed on purpose") }
func (s *stubbed) Short(ctx context.Context) (int, error)        { return 1, nil }
func (s *stubbed) Plain(ctx context.Context, n int) (int, error) { return n + 1, nil }

// TestStubs: calls of methods with stubs run the stubs, which decode
// arguments (values and references), encode results (values and
// references) and report errors as reflection would; a method without a
// stub is dispatched by reflection.
func TestStubs(t *testing.T) {
	ctx := testCtx(t)
	srv := newEnv(t, true)
	_, ep := srv.another(t)
	if err := Publish[Stubbed](srv.ep, "stubbed", &stubbed{}); err != nil {
		t.Fatal(err)
	}
	s, err := Lookup[Stubbed](ctx, ep, srv.node.ID(), "stubbed")
	if err != nil {
		t.Fatal(err)
	}
	defer Release(s)
	runs := stubRuns.Load()

	mine := &counter{}
	str, c, err := s.Pair(ctx, "abc", mine)
	if err != nil || str != "ABC" || mine.n.Load() != 3 {
		t.Fatalf("Pair: %q, %v (counter at %d)", str, err, mine.n.Load())
	}
	if n, err := c.Add(ctx, 2); err != nil || n != 2 {
		t.Fatalf("the counter Pair returned: %d, %v", n, err)
	}
	Release(c)
	if _, err := s.Fail(ctx); err == nil || !strings.Contains(err.Error(), "failed on purpose") {
		t.Fatalf("Fail: %v", err)
	}
	if _, err := s.Short(ctx); err == nil || !strings.Contains(err.Error(), "gave 0 results, want 1") {
		t.Fatalf("Short: %v, want an error for the missing result", err)
	}
	if got := stubRuns.Load() - runs; got != 3 {
		t.Fatalf("the stubs ran %d times, want 3", got)
	}
	if n, err := s.Plain(ctx, 41); err != nil || n != 42 {
		t.Fatalf("Plain (by reflection): %d, %v", n, err)
	}
	if got := stubRuns.Load() - runs; got != 3 {
		t.Fatalf("the stubs ran %d times after Plain, want 3", got)
	}
}

// TestStubsRegisterUnknown: a stub for a method the interface lacks is a
// programming error, reported at Register.
func TestStubsRegisterUnknown(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "Nope") {
			t.Fatalf("Register with a stub of an unknown method: recovered %v", r)
		}
	}()
	type Odd interface {
		Do(ctx context.Context) error
	}
	Register(func(d *Delegate) Odd { return nil }, Stubs[Odd]{
		"Nope": func(ctx context.Context, obj Odd, c *Served) error { return nil },
	})
}

// TestPipelineManyAndLarge: a pipelined chain longer than a batch holds
// (maxBatch) and a call larger than batchBytes go over several loft
// messages, in order, both ways.
func TestPipelineManyAndLarge(t *testing.T) {
	ctx := testCtx(t)
	srv := newEnv(t, true)
	_, ep := srv.another(t)
	if err := Publish[Svc](srv.ep, "svc", &svc{ep: srv.ep, nest: &nester{}}); err != nil {
		t.Fatal(err)
	}
	s, err := Lookup[Svc](ctx, ep, srv.node.ID(), "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer Release(s)
	for _, c := range []struct {
		name  string
		steps int
	}{
		{"x", maxBatch + 44},
		{strings.Repeat("y", batchBytes+1000), 3},
	} {
		pctx := Pipeline(ctx)
		f, err := s.Open(pctx, c.name)
		if err != nil {
			t.Fatal(err)
		}
		fs := []File{f}
		for range c.steps {
			if f, err = f.Next(pctx); err != nil {
				t.Fatal(err)
			}
			fs = append(fs, f)
		}
		got, err := f.Read(ctx)
		if want := "contents of " + c.name + strings.Repeat("+", c.steps); err != nil || got != want {
			t.Fatalf("chain of %d on a name of %d bytes: %d bytes, %v", c.steps, len(c.name), len(got), err)
		}
		for _, f := range fs {
			Release(f)
		}
	}
}
