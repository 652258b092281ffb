package rpcdemo_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc/rpcdemo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestExercise(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sn, err := loft.Open(ctx, loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	cn, err := loft.Open(ctx, loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	sctx, stop := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- rpcdemo.Serve(sctx, sn, func() { close(ready) }) }()
	<-ready
	summary, err := rpcdemo.Exercise(ctx, cn)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(summary)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
