package loft

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A busy channel and a quiet one from the same peer share one conn, and so
// its read baton (see conn.releaseRead and Receiver.recv): the Recv of
// the busy one reads for itself, and the quiet one's waiting Recv must
// neither take the baton for good nor miss its messages.

// quietPair opens two nodes in this process (over shared memory or a Unix
// socket), a busy echo from a to z and back, and a quiet channel from a to
// z whose Recv waits on its own goroutine and reports what it gets.
type quietPair struct {
	ctx      context.Context
	z        *Node
	sa, sq   *Sender
	pong     *Receiver
	ping     *Receiver // the busy channel's, beside the quiet one on z
	got      chan []byte
	stopEcho context.CancelFunc
}

func newQuietPair(t testing.TB, shm, quiet bool) *quietPair {
	t.Helper()
	// (No deadline: a Recv loop under one context registers with it once.)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := runtimeDir(t)
	a := openNode(t, dir, Options{NoSharedMemory: !shm, NoInProcess: true})
	z := openNode(t, dir, Options{NoSharedMemory: !shm, NoInProcess: true})
	ping, err := z.Receive(ctx, "ping", ChannelOptions{Capacity: 16})
	if err != nil {
		t.Fatal(err)
	}
	q := &quietPair{ctx: ctx, z: z, ping: ping, got: make(chan []byte, 16)}
	if q.pong, err = a.Receive(ctx, "pong", ChannelOptions{Capacity: 16}); err != nil {
		t.Fatal(err)
	}
	if q.sa, err = a.Sender(ctx, "ping"); err != nil {
		t.Fatal(err)
	}
	sz, err := z.Sender(ctx, "pong")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, q.sa, 1)
	waitReceivers(t, sz, 1)
	if quiet {
		other, err := z.Receive(ctx, "quiet", ChannelOptions{Capacity: 16})
		if err != nil {
			t.Fatal(err)
		}
		if q.sq, err = a.Sender(ctx, "quiet"); err != nil {
			t.Fatal(err)
		}
		waitReceivers(t, q.sq, 1)
		go func() {
			for {
				m, err := other.Recv(ctx)
				if err != nil {
					return
				}
				q.got <- m.Data
			}
		}()
	}
	echoCtx, stop := context.WithCancel(ctx)
	q.stopEcho = stop
	go func() {
		for {
			m, err := ping.Recv(echoCtx)
			if err != nil || sz.Send(ctx, m.Data) != nil {
				return
			}
		}
	}()
	return q
}

func (q *quietPair) roundTrip(t testing.TB, msg []byte) {
	if err := q.sa.Send(q.ctx, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := q.pong.Recv(q.ctx); err != nil {
		t.Fatal(err)
	}
}

func (q *quietPair) expectQuiet(t testing.TB, want string) {
	t.Helper()
	if err := q.sq.Send(q.ctx, []byte(want)); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-q.got:
		if string(b) != want {
			t.Fatalf("quiet channel got %q, want %q", b, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("quiet channel did not get %q", want)
	}
}

// wakes counts the times the busy channel's waiting Recv (the echo's, on
// z) was woken for a message another goroutine read.
func (q *quietPair) wakes() int {
	q.ping.mu.Lock()
	defer q.ping.mu.Unlock()
	return q.ping.wakes
}

// TestQuietReceiverBesideABusyOne: the busy channel's Recv reads for
// itself (it is not handed its messages by another goroutine), and
// the quiet channel gets its messages while the busy one runs and after
// its Recv stopped reading.
func TestQuietReceiverBesideABusyOne(t *testing.T) {
	// (Three pairs each: whether the quiet Recv finds the baton free
	// depends on timing.)
	for _, shm := range []bool{false, true, false, true, false, true} {
		t.Run(map[bool]string{false: "unix", true: "shm"}[shm], func(t *testing.T) {
			q := newQuietPair(t, shm, true)
			msg := make([]byte, 64)
			q.roundTrip(t, msg)
			before := q.wakes()
			// Between the quiet channel's messages its Recv waits again,
			// and may find the baton free and read the conn itself (the
			// case that went wrong).
			const phases, rounds = 100, 20
			for i := range phases {
				q.expectQuiet(t, fmt.Sprint("during ", i))
				for range rounds {
					q.roundTrip(t, msg)
				}
			}
			// (A few are fine: a Recv that came late; one per round trip
			// is what the bug was.)
			if n := q.wakes() - before; n > phases*rounds/10 {
				t.Fatalf("the busy Recv was handed %d of %d replies by another goroutine", n, phases*rounds)
			}
			q.stopEcho() // (its Recv ends whenever it does: either way the quiet channel must get what follows)
			for i := range 3 {
				q.expectQuiet(t, fmt.Sprint("after ", i))
			}
		})
	}
}

// BenchmarkPingPongQuietBeside is BenchmarkPingPong's round trip with and
// without a Recv waiting on a quiet channel from the same peer.
func BenchmarkPingPongQuietBeside(b *testing.B) {
	for _, quiet := range []bool{false, true} {
		for _, shm := range []bool{false, true} {
			name := map[bool]string{false: "unix", true: "shm"}[shm] + map[bool]string{false: "", true: "/quiet"}[quiet]
			b.Run(name, func(b *testing.B) {
				q := newQuietPair(b, shm, quiet)
				msg := make([]byte, 64)
				b.ReportAllocs()
				for b.Loop() {
					q.roundTrip(b, msg)
				}
			})
		}
	}
}
