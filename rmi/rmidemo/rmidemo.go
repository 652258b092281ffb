// Package rmidemo is the remote-objects part of loft demo: a server process
// publishes a job runner and a directory; the demo passes a progress
// listener that the server calls back, and times a pipelined chain against
// the same calls made one after another.
package rmidemo

import (
	"context"
	"fmt"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rmi"
)

// Listener hears about a job's progress (lives in the caller).
type Listener interface {
	Progress(ctx context.Context, done, total int) error
}

// Jobs runs jobs that report progress.
type Jobs interface {
	Run(ctx context.Context, steps int, l Listener) (int, error)
	Ping(ctx context.Context, n int) (int, error)
}

// File is a chain of files: Next returns the following one.
type File interface {
	Next(ctx context.Context) (File, error)
	Read(ctx context.Context) (string, error)
}

// Dir opens files.
type Dir interface {
	Open(ctx context.Context, name string) (File, error)
}

type listenerProxy struct{ *rmi.Delegate }

func (p listenerProxy) Progress(ctx context.Context, done, total int) error {
	return rmi.Call0(ctx, p.Delegate, "Progress", done, total)
}

type jobsProxy struct{ *rmi.Delegate }

func (p jobsProxy) Run(ctx context.Context, steps int, l Listener) (int, error) {
	return rmi.Call1[int](ctx, p.Delegate, "Run", steps, l)
}
func (p jobsProxy) Ping(ctx context.Context, n int) (int, error) {
	return rmi.Call1[int](ctx, p.Delegate, "Ping", n)
}

type fileProxy struct{ *rmi.Delegate }

func (p fileProxy) Next(ctx context.Context) (File, error) {
	return rmi.Call1[File](ctx, p.Delegate, "Next")
}
func (p fileProxy) Read(ctx context.Context) (string, error) {
	return rmi.Call1[string](ctx, p.Delegate, "Read")
}

type dirProxy struct{ *rmi.Delegate }

func (p dirProxy) Open(ctx context.Context, name string) (File, error) {
	return rmi.Call1[File](ctx, p.Delegate, "Open", name)
}

func init() {
	rmi.Register(func(d *rmi.Delegate) Listener { return listenerProxy{d} })
	rmi.Register(func(d *rmi.Delegate) Jobs { return jobsProxy{d} })
	rmi.Register(func(d *rmi.Delegate) File { return fileProxy{d} })
	rmi.Register(func(d *rmi.Delegate) Dir { return dirProxy{d} })
}

type jobs struct{}

func (jobs) Run(ctx context.Context, steps int, l Listener) (int, error) {
	for i := 1; i <= steps; i++ {
		if err := l.Progress(ctx, i, steps); err != nil {
			return i - 1, err
		}
	}
	return steps, nil
}

func (jobs) Ping(ctx context.Context, n int) (int, error) { return n + 1, nil }

type file struct{ name string }

func (f file) Next(ctx context.Context) (File, error)   { return file{f.name + "+"}, nil }
func (f file) Read(ctx context.Context) (string, error) { return f.name, nil }

type dir struct{}

func (dir) Open(ctx context.Context, name string) (File, error) {
	if name == "" {
		return nil, fmt.Errorf("open: empty name")
	}
	return file{name}, nil
}

// Serve publishes "jobs" and "files" on node and serves them until ctx ends.
func Serve(ctx context.Context, node *loft.Node, ready func()) error {
	ep, err := rmi.Open(ctx, node, rmi.Options{})
	if err != nil {
		return err
	}
	defer ep.Close()
	if err := rmi.Publish[Jobs](ep, "jobs", jobs{}); err != nil {
		return err
	}
	if err := rmi.Publish[Dir](ep, "files", dir{}); err != nil {
		return err
	}
	ready()
	<-ctx.Done()
	return nil
}

// Counter is a Listener that counts the calls it gets.
type Counter struct{ N int }

// Progress counts one call.
func (c *Counter) Progress(ctx context.Context, done, total int) error {
	c.N++
	return nil
}

// Chain5 opens a file, follows Next three times and reads it: five calls,
// pipelined when pctx comes from rmi.Pipeline.
func Chain5(ctx, pctx context.Context, files Dir) error {
	f, err := files.Open(pctx, "f")
	for i := 0; i < 3 && err == nil; i++ {
		f, err = f.Next(pctx)
	}
	if err != nil {
		return err
	}
	s, err := f.Read(ctx)
	rmi.Release(f)
	if err == nil && s != "f+++" {
		err = fmt.Errorf("chain read %q", s)
	}
	return err
}

// Exercise runs the demo against the server node and returns one line.
func Exercise(ctx context.Context, node *loft.Node, server string) (string, error) {
	ep, err := rmi.Open(ctx, node, rmi.Options{})
	if err != nil {
		return "", err
	}
	defer ep.Close()
	js, err := rmi.Lookup[Jobs](ctx, ep, server, "jobs")
	if err != nil {
		return "", err
	}
	l := &Counter{}
	if n, err := js.Run(ctx, 10, l); err != nil || n != 10 || l.N != 10 {
		return "", fmt.Errorf("job with a callback: %d steps, %d callbacks, %v", n, l.N, err)
	}
	files, err := rmi.Lookup[Dir](ctx, ep, server, "files")
	if err != nil {
		return "", err
	}
	chain := func(pctx context.Context) (time.Duration, error) {
		start := time.Now()
		err := Chain5(ctx, pctx, files)
		return time.Since(start), err
	}
	best := func(pctx context.Context) (time.Duration, error) {
		var b time.Duration
		for i := 0; i < 20; i++ {
			d, err := chain(pctx)
			if err != nil {
				return 0, err
			}
			if b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	piped, err := best(rmi.Pipeline(ctx))
	if err != nil {
		return "", err
	}
	seq, err := best(ctx)
	if err != nil {
		return "", err
	}
	bad, _ := files.Open(rmi.Pipeline(ctx), "")
	if _, err := bad.Read(ctx); err == nil {
		return "", fmt.Errorf("an error early in a pipelined chain did not reach its end")
	}
	return fmt.Sprintf("10 progress callbacks from the server during one call; a chain of 5 calls: %s pipelined, %s one after another (best of 20); an early error reached the end of its chain",
		piped.Round(time.Microsecond), seq.Round(time.Microsecond)), nil
}
