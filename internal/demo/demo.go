package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/loft-ipc/loft"
)

// Config says how to run the demo. The zero value runs the current
// executable as the children, with 20 s per part.
type Config struct {
	// Executable is the program started as each child process. Given the
	// arguments ChildCommand, ROLE, ARGS... it must call RunChild. Zero:
	// os.Executable(), which is right for the loft command.
	Executable string
	// Env is added to the children's environment, after the parent's own.
	// A test uses it to tell its test binary to act as a child.
	Env []string
	// PartTimeout bounds each part of the demo. Zero: 20 s.
	PartTimeout time.Duration
}

// Run runs the demo with the zero Config, writing the report to w. It
// returns nil when every part passed.
func Run(ctx context.Context, w io.Writer) error {
	return Config{}.Run(ctx, w)
}

// Run runs every part of the demo in turn, writing one line per part to w,
// and returns an error naming the parts that failed, or nil when all
// passed. A part that fails has its children killed, and the next part
// runs; when ctx ends Run stops at once. No child outlives Run, and the
// demo's runtime directory is removed.
func (cfg Config) Run(ctx context.Context, w io.Writer) error {
	t := &tour{cfg: cfg, w: w, partTimeout: cfg.PartTimeout}
	if t.partTimeout <= 0 {
		t.partTimeout = 20 * time.Second
	}
	t.exe = cfg.Executable
	if t.exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("demo: cannot find this program to start it again as the children: %w", err)
		}
		t.exe = exe
	}
	tmp, err := os.MkdirTemp("", "loft-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(tmp)
	t.rt = filepath.Join(tmp, "rt") // loft creates it with mode 0700

	start := time.Now()
	t.node, err = loft.Open(ctx, loft.Options{Dir: t.rt})
	if err != nil {
		return fmt.Errorf("demo: opening the parent's node: %w", err)
	}
	defer t.node.Close()
	defer t.stopAll(0)

	parts := []struct {
		name string
		run  func(ctx context.Context, fail context.CancelCauseFunc) (string, error)
	}{
		{"producer-consumer", t.producerConsumer},
		{"worker pool", t.workerPool},
		{"direct message", t.direct},
		{"pub/sub", t.pubSub},
		{"death", t.death},
		{"at-least-once", t.atLeastOnce},
		{"rpc", t.rpc},
		{"remote objects", t.rmi},
	}
	fmt.Fprintf(w, "loft demo: %d parts, each between real processes (parent pid %d, runtime dir %s)\n", len(parts), os.Getpid(), t.rt)
	var failed []string
	for _, p := range parts {
		if ctx.Err() != nil {
			failed = append(failed, p.name)
			fmt.Fprintf(w, "  ✗ %-18s not run: %v\n", p.name, context.Cause(ctx))
			continue
		}
		pctx, fail := context.WithCancelCause(ctx)
		pctx, cancel := context.WithTimeoutCause(pctx, t.partTimeout, fmt.Errorf("the part took longer than %v", t.partTimeout))
		pstart := time.Now()
		summary, err := p.run(pctx, fail)
		if err == nil {
			err = context.Cause(pctx) // a child failed after the part finished its checks
		}
		cancel()
		fail(nil)
		if err != nil {
			t.stopAll(0)
			failed = append(failed, p.name)
			fmt.Fprintf(w, "  ✗ %-18s %v\n", p.name, err)
			continue
		}
		t.stopAll(2 * time.Second)
		fmt.Fprintf(w, "  ✓ %-18s %s [%s]\n", p.name, summary, fmtDur(time.Since(pstart)))
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "%d of %d parts failed in %s\n", len(failed), len(parts), fmtDur(time.Since(start)))
		return fmt.Errorf("demo: %d of %d parts failed: %s", len(failed), len(parts), strings.Join(failed, ", "))
	}
	fmt.Fprintf(w, "all %d parts passed in %s; every child process has exited\n", len(parts), fmtDur(time.Since(start)))
	return nil
}

// tour is one run of the demo.
type tour struct {
	cfg         Config
	w           io.Writer
	exe         string
	rt          string
	partTimeout time.Duration
	node        *loft.Node

	mu       sync.Mutex
	children []*child // started and not yet reaped by stopAll
}

// stopAll ends every child: politely (stdin closed, grace to exit) when
// grace > 0, with SIGKILL otherwise. It returns once all are reaped.
func (t *tour) stopAll(grace time.Duration) {
	t.mu.Lock()
	cs := t.children
	t.children = nil
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if grace <= 0 {
				c.kill()
			}
			c.stop(grace)
		}()
	}
	wg.Wait()
}

// spawnReady starts n children of one role and waits until each is ready.
func (t *tour) spawnReady(ctx context.Context, fail context.CancelCauseFunc, label string, n int, role string, args ...string) ([]*child, error) {
	cs := make([]*child, n)
	for i := range cs {
		l := label
		if n > 1 {
			l = fmt.Sprintf("%s %d", label, i+1)
		}
		c, err := t.spawn(l, fail, role, args...)
		if err != nil {
			return nil, err
		}
		cs[i] = c
	}
	for _, c := range cs {
		if err := c.ready(ctx); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// waitReceivers waits until s is attached to n receivers.
func waitReceivers(ctx context.Context, s *loft.Sender, n int) error {
	if err := s.WaitReceivers(ctx, n); err != nil {
		return fmt.Errorf("waiting for the sender to find %d receiver(s) of %q: %w", n, s.Name(), causeOr(ctx, err))
	}
	return nil
}

// fmtDur prints a duration with three significant digits or so.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// fmtRate prints a rate of messages per second.
func fmtRate(n int, d time.Duration) string {
	if d <= 0 {
		return "∞ msg/s"
	}
	r := float64(n) / d.Seconds()
	switch {
	case r >= 1e6:
		return fmt.Sprintf("%.2fM msg/s", r/1e6)
	case r >= 1e3:
		return fmt.Sprintf("%.0fk msg/s", r/1e3)
	}
	return fmt.Sprintf("%.0f msg/s", r)
}
