package rmi

import (
	"testing"
)

// BenchmarkInProcess runs the benchmark chains between two nodes of one
// process (loft's in-process transport): no wake-up crosses processes, so
// with -cpu 1 the time per operation is the CPU that rmi and loft spend
// on it, both sides together.
func BenchmarkInProcess(b *testing.B) {
	ctx := testCtx(b)
	srv := newEnv(b, true)
	_, ep := srv.another(b)
	if err := Publish[Svc](srv.ep, "svc", &svc{ep: srv.ep, nest: &nester{}}); err != nil {
		b.Fatal(err)
	}
	s, err := Lookup[Svc](ctx, ep, srv.node.ID(), "svc")
	if err != nil {
		b.Fatal(err)
	}
	l := &progress{}
	cases := []struct {
		name string
		fn   func() error
	}{
		{"call", func() error { return oneCall(ctx, s) }},
		{"callback", func() error { return callback(ctx, s, l) }},
		{"pipeline5", func() error { return chain5(ctx, s, true) }},
		{"sequential5", func() error { return chain5(ctx, s, false) }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	Release(s)
}
