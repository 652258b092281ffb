package loft

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Tests of Recv reading its connection itself (conn.readFrames with a
// receiver): it must stop for its context, for Close, and for a sender on
// another connection, and nobody waiting on the same connection may starve
// while it holds the read baton or after it let go.

// waitDirect waits until a Recv on r reads its connection itself.
func waitDirect(t *testing.T, r *Receiver) *conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		c := r.dreading
		r.mu.Unlock()
		if c != nil {
			return c
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no Recv started reading its connection itself")
	return nil
}

// pair returns a receiver on ns[0] with one message already taken from a
// sender on ns[1], so that the next Recv reads the connection itself.
func directPair(t *testing.T, ctx context.Context, ns []*Node, name string, capacity int) (*Receiver, *Sender) {
	t.Helper()
	r, s := attachPair(t, ctx, ns, name, capacity)
	// The first message goes to a Recv already waiting: the background
	// reader then leaves the reading to Recv.
	got := recvAsync(ctx, r)
	for {
		r.mu.Lock()
		w := r.waiting
		r.mu.Unlock()
		if w > 0 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Send(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if m, err := await(t, got, "the first message"); err != nil || string(m.Data) != "first" {
		t.Fatalf("first message: %q, %v", m.Data, err)
	}
	return r, s
}

// recvAsync runs one Recv on r in the background.
func recvAsync(ctx context.Context, r *Receiver) <-chan recvResult {
	ch := make(chan recvResult, 1)
	go func() {
		m, err := r.Recv(ctx)
		ch <- recvResult{m, err}
	}()
	return ch
}

type recvResult struct {
	m   Message
	err error
}

// await waits (10 s at most) for the Recv started by recvAsync.
func await(t *testing.T, ch <-chan recvResult, what string) (Message, error) {
	t.Helper()
	select {
	case res := <-ch:
		return res.m, res.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Recv did not end: %s", what)
		return Message{}, nil
	}
}

// cancelDirectRecv starts a Recv on r, waits until it reads its connection
// itself, cancels its context and checks that it ends promptly.
func cancelDirectRecv(t *testing.T, ctx context.Context, r *Receiver) {
	t.Helper()
	rctx, rcancel := context.WithCancel(ctx)
	got := recvAsync(rctx, r)
	waitDirect(t, r)
	rcancel()
	if _, err := await(t, got, "a Recv reading its connection, after its context was cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv after cancel: %v", err)
	}
}

// transports are the node options that put two nodes of one process on
// each transport a Recv can read for itself.
var transports = []struct {
	name string
	opts Options
}{
	{"inproc", Options{}},
	{"unix", Options{NoInProcess: true, NoSharedMemory: true}},
	{"shm", Options{NoInProcess: true}},
	{"shm-poll", Options{NoInProcess: true, BusyPoll: true}},
}

// onEachTransport runs f as a subtest on each of transports.
func onEachTransport(t *testing.T, f func(t *testing.T, ns []*Node)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { f(t, testNodesWith(t, 2, tr.opts)) })
	}
}

func TestDirectRecvContext(t *testing.T) { onEachTransport(t, testDirectRecvContext) }

func testDirectRecvContext(t *testing.T, ns []*Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, s := directPair(t, ctx, ns, "ctx", 4)
	for i := 0; i < 3; i++ {
		cancelDirectRecv(t, ctx, r)
		// The connection is still good: the interrupted read lost nothing.
		if err := s.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		m, err := r.Recv(ctx)
		if err != nil || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("after an interrupted Recv: %q, %v", m.Data, err)
		}
	}
}

func TestDirectRecvClose(t *testing.T) {
	ns := testNodes(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, _ := directPair(t, ctx, ns, "close", 4)
	got := recvAsync(ctx, r)
	waitDirect(t, r)
	r.Close()
	if _, err := await(t, got, "a Recv reading its connection, after Close"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
}

// TestDirectRecvNewSender: a Recv reading one connection must see a message
// from a sender that attaches on another.
func TestDirectRecvNewSender(t *testing.T) {
	ns := testNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, _ := directPair(t, ctx, ns, "more", 4)
	got := recvAsync(ctx, r)
	waitDirect(t, r)
	s2, err := ns[2].Sender(ctx, "more")
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Send(ctx, []byte("from the third node")); err != nil {
		t.Fatal(err)
	}
	if m, err := await(t, got, "a Recv reading one connection, for a message on another"); err != nil || string(m.Data) != "from the third node" {
		t.Fatalf("got %q, %v", m.Data, err)
	}
}

// TestDirectSharedConn: two receivers fed through one connection, each
// with its own goroutine, plus a sender on the same connection in the other
// direction that needs ACKs: all complete, and waiting parties do not rely
// on the hand-back timer.
func TestDirectSharedConn(t *testing.T) {
	ns := testNodes(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rx, _ := ns[0].Receive(ctx, "x", ChannelOptions{Capacity: 2})
	ry, _ := ns[0].Receive(ctx, "y", ChannelOptions{Capacity: 2})
	rb, _ := ns[1].Receive(ctx, "back", ChannelOptions{Capacity: 2})
	sx, _ := ns[1].Sender(ctx, "x")
	sy, _ := ns[1].Sender(ctx, "y")
	sb, _ := ns[0].Sender(ctx, "back")
	const N = 3000
	var wg sync.WaitGroup
	recv := func(r *Receiver, pause int) {
		defer wg.Done()
		for i := 0; i < N; i++ {
			m, err := r.Recv(ctx)
			if err != nil {
				t.Errorf("%s: %v", r.Name(), err)
				return
			}
			if string(m.Data) != fmt.Sprint(i) {
				t.Errorf("%s: got %q want %d", r.Name(), m.Data, i)
				return
			}
			if pause > 0 && i%pause == 0 {
				time.Sleep(100 * time.Microsecond) // a slow consumer now and then
			}
		}
	}
	send := func(s *Sender) {
		defer wg.Done()
		for i := 0; i < N; i++ {
			if err := s.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
				t.Errorf("send %s: %v", s.Name(), err)
				return
			}
		}
	}
	wg.Add(6)
	go recv(rx, 0)
	go recv(ry, 7)
	go recv(rb, 13)
	go send(sx)
	go send(sy)
	go send(sb)
	wg.Wait()
	var handBacks int64
	for _, n := range ns {
		n.mu.Lock()
		for c := range n.conns {
			handBacks += c.handBacks.Load()
		}
		n.mu.Unlock()
	}
	// Every wait above is registered (waitingOn), so the background reader
	// is called at once; the timer is only a safety net. A few firings are
	// fine (a consumer pausing with nobody waiting); one per message is not.
	if handBacks > N/10 {
		t.Fatalf("the background reader was called by the hand-back timer %d times for %d messages", handBacks, 3*N)
	}
}

// TestDirectTCP: over TCP, a Recv reading its connection itself stops for
// its context and for Close, and a peer that falls silent is still
// declared gone by the heartbeat while a Recv is reading.
func TestDirectTCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, s, p := frozenTCPPair(t, ctx, "tcp-direct")
	// Request and reply in turn, so that Recv reads the connection.
	for i := 0; i < 20; i++ {
		got := recvAsync(ctx, r)
		if err := s.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		if m, err := await(t, got, "request "+fmt.Sprint(i)); err != nil || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("got %q, %v, want %d", m.Data, err, i)
		}
	}
	// Cancel a Recv reading the TCP connection.
	cancelDirectRecv(t, ctx, r)
	// A Recv reads again; the peer falls silent: the heartbeat timeout
	// still ends the connection.
	go r.Recv(ctx)
	waitDirect(t, r)
	lat := p.freezeUntil(t, func() bool { return r.Stats().Senders == 0 })
	t.Logf("silent peer dropped %v after the partition (timeout 300ms)", lat)
	r.Close()
}

// TestDirectRecvDeadlines: Recv calls with a context per call (a deadline
// each) end at their deadline while reading their connection, one after
// another, and a message after them still arrives.
func TestDirectRecvDeadlines(t *testing.T) { onEachTransport(t, testDirectRecvDeadlines) }

func testDirectRecvDeadlines(t *testing.T, ns []*Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, s := directPair(t, ctx, ns, "deadlines", 4)
	for i := 0; i < 5; i++ {
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Millisecond)
		start := time.Now()
		_, err := r.Recv(cctx)
		ccancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Recv %d ended %v after a 20 ms deadline", i, d)
		}
	}
	if err := s.Send(ctx, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Recv(ctx); err != nil || string(m.Data) != "after" {
		t.Fatalf("after deadlines: %q, %v", m.Data, err)
	}
}
