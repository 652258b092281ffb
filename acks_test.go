package loft

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRepliesCarryAcks checks that calls back to back (a request on one
// channel, its reply on another) need no urgent ACK: each side's ACKs ride
// on its next message. An urgent ACK wakes the conn's writer goroutine, and
// on a small machine the thread it wakes takes the CPU from a side that
// spins for its answer (one call in a hundred took 100 µs over shared
// memory when one went every quarter window).
func TestRepliesCarryAcks(t *testing.T) {
	ns := testNodes(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const window = 64
	reqs, err := ns[0].Receive(ctx, "req", ChannelOptions{Capacity: window})
	if err != nil {
		t.Fatal(err)
	}
	reps, err := ns[1].Receive(ctx, "rep", ChannelOptions{Capacity: window})
	if err != nil {
		t.Fatal(err)
	}
	toServer, err := ns[1].Sender(ctx, "req")
	if err != nil {
		t.Fatal(err)
	}
	toClient, err := ns[0].Sender(ctx, "rep")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, toServer, 1)
	waitReceivers(t, toClient, 1)
	const calls = 40 * window
	served := make(chan error, 1)
	go func() {
		for range calls {
			m, err := reqs.Recv(ctx)
			if err == nil {
				err = toClient.Send(ctx, m.Data)
			}
			if err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	urgent := func() int {
		n := 0
		for _, nd := range ns {
			nd.mu.Lock()
			for c := range nd.conns {
				c.wmu.Lock()
				n += c.urgentAcks
				c.wmu.Unlock()
			}
			nd.mu.Unlock()
		}
		return n
	}
	before := urgent()
	for i := range calls {
		if err := toServer.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		m, err := reps.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Data[0] != byte(i) {
			t.Fatalf("reply %d carries %d", i, m.Data[0])
		}
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// A quarter window each way is 2*calls/(window/4) = 320 ACKs; a few
	// may still go urgent (a 20 ms timer's lazy ACK racing a reply).
	if n := urgent() - before; n > 8 {
		t.Fatalf("%d urgent ACKs for %d calls back to back with a window of %d: replies should carry them", n, calls, window)
	}
}

// TestStreamAcksInline checks that in a one-way stream the goroutine that
// takes a message writes the urgent ACK the take made due itself (Recv,
// RecvBatch, TryRecv and Handle), instead of waking the conn's writer
// goroutine for it: on a busy 2-core machine that goroutine waited for a
// thread for 0.4 ms on average, up to 8 ms, while the sender waited for
// its credit.
func TestStreamAcksInline(t *testing.T) {
	const window = 256
	const msgs = 32 * window
	takers := map[string]func(ctx context.Context, r *Receiver) error{
		"Recv": func(ctx context.Context, r *Receiver) error {
			for range msgs {
				if _, err := r.Recv(ctx); err != nil {
					return err
				}
			}
			return nil
		},
		"RecvBatch": func(ctx context.Context, r *Receiver) error {
			ms := make([]Message, 16)
			for n := 0; n < msgs; {
				k, err := r.RecvBatch(ctx, ms)
				if err != nil {
					return err
				}
				n += k
			}
			return nil
		},
		"Handle": func(ctx context.Context, r *Receiver) error {
			hctx, cancel := context.WithCancel(ctx)
			defer cancel()
			n := 0
			return r.Handle(hctx, 1, func(ctx context.Context, m Message) {
				if n++; n == msgs {
					cancel()
				}
			})
		},
	}
	for _, tr := range transports {
		for name, take := range takers {
			t.Run(tr.name+"/"+name, func(t *testing.T) {
				testStreamAcksInline(t, tr.opts, take)
			})
		}
	}
}

func testStreamAcksInline(t *testing.T, opts Options, take func(ctx context.Context, r *Receiver) error) {
	const window = 256
	const msgs = 32 * window
	s, r, ns := channelPairWith(t, opts, "stream", window)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() {
		for i := range msgs {
			if err := s.Send(ctx, []byte{byte(i)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	if err := take(ctx, r); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var urgent, handed int
	ns[0].mu.Lock()
	for c := range ns[0].conns {
		c.wmu.Lock()
		urgent += c.urgentAcks
		handed += c.handedAcks
		c.wmu.Unlock()
	}
	ns[0].mu.Unlock()
	// A quarter window at a time: about 4 per window's worth.
	if urgent < msgs/window {
		t.Fatalf("%d urgent ACKs for %d messages with a window of %d", urgent, msgs, window)
	}
	if handed != 0 {
		t.Fatalf("%d of %d urgent ACKs were handed to the writer goroutine", handed, urgent)
	}
}

// TestAckLeftForLockHolder: an ACK that arrives while the sending goroutine
// holds the Sender's lock is left on the link, without waiting for the
// lock, and the holder applies it at its next Send: the credit it brings
// lets that Send go.
func TestAckLeftForLockHolder(t *testing.T) {
	const window = 8
	s, _, _ := channelPair(t, "left", window)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range window {
		if err := s.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.TrySend([]byte("no credit")); !errors.Is(err, ErrFull) {
		t.Fatalf("send past the window: %v, want ErrFull", err)
	}
	s.mu.Lock() // as a sending goroutine would
	l := s.links[0]
	limit := l.limit
	acked := make(chan error, 1)
	go func() { acked <- s.ack(l, 0, limit+4) }()
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		s.mu.Unlock()
		t.Fatal("the ACK waited for the Sender's lock")
	}
	if l.limit != limit || !s.acksLeft.Load() {
		t.Fatalf("limit %d (was %d), left %v: the ACK should wait on the link", l.limit, limit, s.acksLeft.Load())
	}
	s.mu.Unlock()
	if err := s.TrySend([]byte("credit")); err != nil {
		t.Fatalf("send with the left ACK's credit: %v", err)
	}
	s.mu.Lock()
	got, left := l.limit, s.acksLeft.Load()
	s.mu.Unlock()
	if got < limit+4 || left {
		t.Fatalf("limit %d, left %v after a Send: want at least %d, none left", got, left, limit+4)
	}
}

// TestRawWriterTryNeverWaits: the socket write an inline ACK uses writes
// what the socket takes and returns, however full it is.
func TestRawWriterTryNeverWaits(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f0, f1 := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer f1.Close()
	nc, err := net.FileConn(f0) // (non-blocking, in the netpoller)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	w := newRawWriter(nc.(*net.UnixConn))
	p := make([]byte, 64<<10)
	total := 0
	for i := 0; ; i++ {
		n, err := w.try(p)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n < len(p) {
			break // full: the peer reads nothing
		}
		if i > 10000 {
			t.Fatalf("wrote %d bytes into a socket nobody reads", total)
		}
	}
	if n, err := w.try(p); n != 0 || err != nil {
		t.Fatalf("try on a full socket: %d, %v", n, err)
	}
	got := make([]byte, total)
	if _, err := io.ReadFull(f1, got); err != nil {
		t.Fatal(err)
	}
}

// TestBothWaysStreams: two nodes stream to each other at once with small
// windows, so that each side's receiving goroutines write urgent ACKs
// while its senders fill the same conn; every message arrives, in order,
// on every transport.
func TestBothWaysStreams(t *testing.T) {
	onEachTransport(t, func(t *testing.T, ns []*Node) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		const window = 64
		const msgs = 200 * window
		errs := make(chan error, 4)
		for i := range 2 {
			me, peer := ns[i], ns[1-i]
			name := "both-" + itoa(i)
			r, err := me.Receive(ctx, name, ChannelOptions{Capacity: window})
			if err != nil {
				t.Fatal(err)
			}
			s, err := peer.Sender(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			waitReceivers(t, s, 1)
			payload := make([]byte, 100)
			go func() {
				for j := range msgs {
					payload[0], payload[1], payload[2] = byte(j), byte(j>>8), byte(j>>16)
					if err := s.Send(ctx, payload); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			go func() {
				for j := range msgs {
					m, err := r.Recv(ctx)
					if err != nil {
						errs <- err
						return
					}
					if got := int(m.Data[0]) | int(m.Data[1])<<8 | int(m.Data[2])<<16; got != j&0xffffff {
						errs <- errors.New("message " + itoa(j) + " out of order: " + itoa(got))
						return
					}
				}
				errs <- nil
			}()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestRecvBatchAcksTwoConns: RecvBatch takes messages of two senders on
// two conns in one batch, each take making an ACK due; every conn's ACKs
// still go (a batch owns at most one conn's flush, the others' ACKs go to
// their writer goroutines), so both streams run to the end.
func TestRecvBatchAcksTwoConns(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ns := testNodesWith(t, 3, tr.opts)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			const window = 128
			const msgs = 100 * window
			r, err := ns[0].Receive(ctx, "two", ChannelOptions{Capacity: window})
			if err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, 2)
			for _, nd := range ns[1:] {
				s, err := nd.Sender(ctx, "two")
				if err != nil {
					t.Fatal(err)
				}
				waitReceivers(t, s, 1)
				go func() {
					for range msgs {
						if err := s.Send(ctx, []byte("x")); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			ms := make([]Message, 64)
			for got := 0; got < 2*msgs; {
				n, err := r.RecvBatch(ctx, ms)
				if err != nil {
					t.Fatalf("after %d of %d messages: %v", got, 2*msgs, err)
				}
				got += n
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
