package loft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func openNode(t testing.TB, dir string, opts Options) *Node {
	t.Helper()
	opts.Dir = dir
	n, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// collect reads "got FROM N" lines from children until want distinct
// messages were seen or the deadline passes. It returns counts per message.
func collect(t *testing.T, want int, d time.Duration, cs ...*child) (map[int]int, map[*child][]int) {
	t.Helper()
	counts := map[int]int{}
	per := map[*child][]int{}
	deadline := time.After(d)
	agg := make(chan [2]any, 1024)
	stop := make(chan struct{})
	defer close(stop)
	for _, c := range cs {
		go func() {
			for l := range c.Lines {
				select {
				case agg <- [2]any{c, l}:
				case <-stop:
					return
				}
			}
		}()
	}
	for len(counts) < want {
		select {
		case x := <-agg:
			c, l := x[0].(*child), x[1].(string)
			f := strings.Fields(l)
			if len(f) != 3 || f[0] != "got" {
				continue
			}
			v, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("bad line %q", l)
			}
			counts[v]++
			per[c] = append(per[c], v)
		case <-deadline:
			t.Fatalf("received %d distinct messages of %d within %v", len(counts), want, d)
		}
	}
	return counts, per
}

func TestProcCompetingReceivers(t *testing.T) {
	dir := runtimeDir(t)
	a := startChild(t, dir, "recv", "cap=64")
	b := startChild(t, dir, "recv", "cap=64")
	a.Expect("ready", 10*time.Second)
	b.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := n.Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 2)
	const N = 5000
	for i := 0; i < N; i++ {
		if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	counts, per := collect(t, N, 20*time.Second, a, b)
	for v, c := range counts {
		if c != 1 {
			t.Fatalf("message %d received %d times", v, c)
		}
	}
	for c, vs := range per {
		if len(vs) == 0 {
			t.Errorf("a receiver got nothing: the two did not share the work")
		}
		for i := 1; i < len(vs); i++ {
			if vs[i] <= vs[i-1] {
				t.Fatalf("receiver %d: FIFO per sender broken: %d after %d", c.Cmd.Process.Pid, vs[i], vs[i-1])
			}
		}
	}
	t.Logf("split: %d / %d", len(per[a]), len(per[b]))
}

// linked opens two nodes of this process in a new runtime directory, a
// receiver of channel name on the first and a sender to it on the second,
// and waits until the sender is attached.
func linked(t testing.TB, ctx context.Context, name string, ropts, sopts Options, copts ChannelOptions) (*Receiver, *Sender) {
	t.Helper()
	dir := runtimeDir(t)
	r, err := openNode(t, dir, ropts).Receive(ctx, name, copts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := openNode(t, dir, sopts).Sender(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	return r, s
}

func waitReceivers(t testing.TB, s *Sender, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReceivers(ctx, n); err != nil {
		t.Fatalf("sender attached to %d receivers, want %d: %v", s.Stats().Receivers, n, err)
	}
}

func TestProcSynchronous(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "step", "cap=0")
	c.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := n.Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	for i := 0; i < 3; i++ {
		done := make(chan error, 1)
		go func() { done <- s.Send(ctx, []byte(strconv.Itoa(i))) }()
		select {
		case err := <-done:
			t.Fatalf("synchronous Send returned (%v) before any Recv was called", err)
		case <-time.After(150 * time.Millisecond):
		}
		c.Send("go")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := c.Expect("got", 5*time.Second); !strings.HasSuffix(got, " "+strconv.Itoa(i)) {
			t.Fatalf("got %q", got)
		}
	}
}

func TestProcPeerGoneAfterKill(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "recv", "cap=16")
	c.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := n.Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	if err := s.Send(ctx, []byte("1")); err != nil {
		t.Fatal(err)
	}
	c.Expect("got", 5*time.Second)
	start := time.Now()
	c.Cmd.Process.Kill()
	// Send blocks until the sender learns the receiver is gone; it must not hang.
	var lat time.Duration
	for {
		err := s.Send(ctx, []byte("2"))
		if errors.Is(err, ErrPeerGone) {
			lat = time.Since(start)
			break
		}
		if err != nil {
			t.Fatalf("want ErrPeerGone, got %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("Send never returned ErrPeerGone")
		}
	}
	<-c.Done
	t.Logf("ErrPeerGone %v after SIGKILL", lat)
	if lat > 100*time.Millisecond {
		t.Errorf("ErrPeerGone took %v after SIGKILL, want < 100ms", lat)
	}
}

// TestProcKillInFlight kills a receiver that holds unacknowledged messages
// and checks what each delivery guarantee promises. Mode "batch" is "least"
// with SendBatch on the sending side and RecvBatch in the receiver that
// survives.
func TestProcKillInFlight(t *testing.T) {
	for _, mode := range []string{"least", "exactly", "most", "batch"} {
		t.Run(mode, func(t *testing.T) {
			delivery, recvRole := mode, "recv"
			if mode == "batch" {
				delivery, recvRole = "least", "recvbatch"
			}
			dir := runtimeDir(t)
			hold := startChild(t, dir, "hold", "cap=500", "delivery="+delivery)
			hold.Expect("ready", 10*time.Second)
			n := openNode(t, dir, Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := n.Sender(ctx, "jobs")
			if err != nil {
				t.Fatal(err)
			}
			waitReceivers(t, s, 1)
			const N = 2000
			sent := make(chan error, 1)
			go func() {
				const batch = 50
				for i := 0; i < N; i += batch {
					msgs := make([][]byte, batch)
					for j := range msgs {
						msgs[j] = []byte(strconv.Itoa(i + j))
					}
					if mode == "batch" {
						if k, err := s.SendBatch(ctx, msgs); err != nil {
							sent <- fmt.Errorf("batch from %d: %d sent, %w", i, k, err)
							return
						}
						continue
					}
					for j, m := range msgs {
						if err := s.Send(ctx, m); err != nil {
							sent <- fmt.Errorf("send %d: %w", i+j, err)
							return
						}
					}
				}
				sent <- nil
			}()
			// The holder fills up (500 buffered, never taken), then a second
			// receiver arrives, then the holder dies with its 500 in flight.
			deadline := time.Now().Add(10 * time.Second)
			for s.Stats().Sent < 500 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			recv := startChild(t, dir, recvRole, "cap=64", "delivery="+delivery)
			recv.Expect("ready", 10*time.Second)
			waitReceivers(t, s, 2)
			hold.Kill()
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if mode == "most" {
				if err := s.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				st := s.Stats()
				counts, _ := collect(t, N-int(st.Lost), 20*time.Second, recv)
				if st.Lost == 0 {
					t.Fatalf("AtMostOnce: receiver died with messages in flight but none counted lost: %+v", st)
				}
				t.Logf("AtMostOnce: %d received, %d lost and counted", len(counts), st.Lost)
				return
			}
			counts, _ := collect(t, N, 20*time.Second, recv)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			dups := 0
			for _, c := range counts {
				dups += c - 1
			}
			st := s.Stats()
			t.Logf("%s: %d of %d received, %d duplicates, %d redelivered", mode, len(counts), N, dups, st.Redelivered)
			if st.Redelivered < 500 {
				t.Errorf("expected the holder's 500 messages to be redelivered, got %d", st.Redelivered)
			}
			if mode == "exactly" && dups != 0 {
				t.Errorf("ExactlyOnce delivered %d duplicates", dups)
			}
		})
	}
}

func TestProcTopic(t *testing.T) {
	dir := runtimeDir(t)
	a := startChild(t, dir, "subscribe", "name=news", "cap=128")
	b := startChild(t, dir, "subscribe", "name=news", "cap=128")
	a.Expect("ready", 10*time.Second)
	b.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := n.Publisher(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, p, 2)
	const N = 1000
	for i := 0; i < N; i++ {
		if err := p.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*child{a, b} {
		counts, _ := collect(t, N, 10*time.Second, c)
		if len(counts) != N {
			t.Fatalf("subscriber got %d of %d", len(counts), N)
		}
	}
}

func TestProcDirect(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "inbox")
	id := c.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.SendTo(ctx, id, []byte("42")); err != nil {
		t.Fatal(err)
	}
	got := c.Expect("got", 5*time.Second)
	if got != n.ID()+" 42" {
		t.Fatalf("inbox got %q", got)
	}
}

func TestProcWatchDown(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "recv", "cap=1")
	id := strings.Fields(c.Expect("ready", 10*time.Second))[0]
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := n.Watch(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	e := <-ev
	if e.Kind != Up || e.Node != id {
		t.Fatalf("first event %+v, want up of %s", e, id)
	}
	start := time.Now()
	c.Cmd.Process.Kill()
	e = <-ev
	lat := time.Since(start)
	if e.Kind != Down || e.Node != id {
		t.Fatalf("event %+v, want down of %s", e, id)
	}
	t.Logf("down event %v after SIGKILL (%v)", lat, e.Err)
	if lat > 100*time.Millisecond {
		t.Errorf("down event took %v", lat)
	}
	cancel()
	for range ev {
	}
}

func TestProcPassFile(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "recv", "cap=4")
	c.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := n.Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	f, err := os.CreateTemp(t.TempDir(), "pass")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("secret-contents")
	f.Seek(0, 0)
	if err := s.SendFile(ctx, []byte("file"), f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := c.Expect("file", 5*time.Second); got != "secret-contents" {
		t.Fatalf("child read %q through the passed file", got)
	}
}

func TestWatchNodeAlreadyGone(t *testing.T) {
	dir := runtimeDir(t)
	c := startChild(t, dir, "inbox")
	id := c.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	c.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := n.Watch(ctx, "node:"+id)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ev:
		if e.Kind != Down || e.Node != id || !errors.Is(e.Err, ErrPeerGone) {
			t.Fatalf("event %+v, want down of %s", e, id)
		}
	case <-ctx.Done():
		t.Fatal("no down event for a node killed before Watch started")
	}
	cancel()
	for range ev {
	}
}
