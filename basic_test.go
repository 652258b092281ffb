package loft

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

func testNodes(t *testing.T, n int) []*Node {
	t.Helper()
	return testNodesWith(t, n, Options{})
}

// testNodesWith opens n nodes with opts in one runtime directory.
func testNodesWith(t *testing.T, n int, opts Options) []*Node {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	opts.Dir = dir
	var out []*Node
	for i := 0; i < n; i++ {
		nd, err := Open(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		out = append(out, nd)
	}
	return out
}

func TestBasicChannel(t *testing.T) {
	ns := testNodes(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := ns[0].Receive(ctx, "jobs", ChannelOptions{Capacity: 16})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ns[1].Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	const N = 10000
	go func() {
		for i := 0; i < N; i++ {
			if err := s.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < N; i++ {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("got %q want %d", m.Data, i)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCloseAcknowledgesTaken: messages taken before a receiver closes are
// acknowledged, not redelivered.
func TestCloseAcknowledgesTaken(t *testing.T) {
	ns := testNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, _ := ns[0].Receive(ctx, "jobs", ChannelOptions{Capacity: 64})
	s, _ := ns[1].Sender(ctx, "jobs")
	s.Send(ctx, []byte("1"))
	s.Send(ctx, []byte("2"))
	r.Recv(ctx)
	r.Recv(ctx)
	r.Close()
	fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
	defer fcancel()
	if err := s.Flush(fctx); err != nil {
		t.Fatalf("flush after the receiver took both and closed: %v (%+v)", err, s.Stats())
	}
	if st := s.Stats(); st.Acked != 2 || st.Redelivered != 0 {
		t.Fatalf("stats %+v", st)
	}
}
