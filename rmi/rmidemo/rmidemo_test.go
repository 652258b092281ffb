package rmidemo

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loft-ipc/loft"
)

// TestExercise runs the demo between two nodes of this process, through
// the generated proxies.
func TestExercise(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "rt")
	server, err := loft.Open(ctx, loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := loft.Open(ctx, loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sctx, stop := context.WithCancel(ctx)
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- Serve(sctx, server, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatal(err)
	}
	line, err := Exercise(ctx, client, server.ID())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "10 progress callbacks") {
		t.Errorf("Exercise: %q", line)
	}
	stop()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
