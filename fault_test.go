package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loft-ipc/loft/transport"
	"github.com/loft-ipc/loft/wire"
)

// cutProxy forwards TCP connections to target and cuts each of the first
// cuts connections after a random number of client bytes.
type cutProxy struct {
	ln     net.Listener
	target string
	cuts   atomic.Int32
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string, cuts int) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.cuts.Store(int32(cuts))
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *cutProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *cutProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c)
		p.track(s)
		limit := int64(-1)
		if p.cuts.Add(-1) >= 0 {
			limit = 512 + rand.Int64N(16<<10)
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			if limit >= 0 {
				io.CopyN(s, c, limit)
			} else {
				io.Copy(s, c)
			}
			c.Close()
			s.Close()
		}()
		go func() {
			defer p.wg.Done()
			io.Copy(c, s)
			c.Close()
			s.Close()
		}()
	}
}

func TestProcTCPCutsLoseNothing(t *testing.T) {
	for _, mode := range []string{"least", "exactly"} {
		t.Run(mode, func(t *testing.T) {
			dir := runtimeDir(t)
			c := startChild(t, dir, "recv", "cap=256", "tcp=127.0.0.1:0", "delivery="+mode)
			var target string
			for _, f := range strings.Fields(c.Expect("ready", 10*time.Second)) {
				if strings.HasPrefix(f, "tcp://") {
					target = strings.TrimPrefix(f, "tcp://")
				}
			}
			p := newCutProxy(t, target, 8)
			n := openNode(t, dir, Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			s, err := n.Sender(ctx, "tcp://"+p.ln.Addr().String()+"/jobs")
			if err != nil {
				t.Fatal(err)
			}
			const N = 20000
			go func() {
				for i := 0; i < N; i++ {
					for {
						err := s.Send(ctx, []byte(strconv.Itoa(i)))
						if err == nil {
							break
						}
						if !errors.Is(err, ErrPeerGone) {
							t.Errorf("send %d: %v", i, err)
							return
						}
						// Every receiver is gone for a moment: the message
						// was not taken; wait for the reconnect and retry.
						waitReceivers(t, s, 1)
					}
				}
			}()
			counts, _ := collect(t, N, 50*time.Second, c)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			dups := 0
			for _, k := range counts {
				dups += k - 1
			}
			st := s.Stats()
			t.Logf("%s: %d cuts, %d of %d received, %d duplicates, %d redelivered", mode, 8-max(0, int(p.cuts.Load())), len(counts), N, dups, st.Redelivered)
			if p.cuts.Load() > 0 {
				t.Errorf("the proxy cut only %d connections", 8-p.cuts.Load())
			}
			if mode == "exactly" && dups != 0 {
				t.Errorf("ExactlyOnce: %d duplicates after reconnects", dups)
			}
		})
	}
}

// rawConn dials a node's Unix socket and performs the handshake by hand.
func rawConn(t *testing.T, n *Node, scheme string) (net.Conn, *wire.Reader) {
	t.Helper()
	var c net.Conn
	for _, a := range n.Addrs() {
		u, _ := url.Parse(a)
		if u.Scheme != scheme {
			continue
		}
		var err error
		c, err = transport.Dial(context.Background(), u, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	if c == nil {
		t.Fatalf("node has no %s address", scheme)
	}
	t.Cleanup(func() { c.Close() })
	p := wire.AppendUvarint(nil, wire.Version)
	p = wire.AppendString(p, "raw-test")
	c.Write(wire.AppendFrame(nil, wire.THello, 0, p))
	r := wire.NewReader(c, 1<<20)
	f, err := r.Next()
	if err != nil || f.Type != wire.THelloAck {
		t.Fatalf("handshake: %v %v", f.Type, err)
	}
	return c, r
}

func attachFrame(att uint32, kind, name string) []byte {
	p := binary.AppendUvarint(nil, uint64(att))
	p = wire.AppendString(p, kind)
	p = wire.AppendString(p, name)
	p = binary.AppendUvarint(p, 7)
	return wire.AppendFrame(nil, wire.TAttach, 0, p)
}

func dataFrame(att uint32, msgs ...[]byte) []byte {
	p := binary.AppendUvarint(nil, uint64(att))
	p = binary.AppendUvarint(p, 1)
	for i, m := range msgs {
		p = binary.AppendUvarint(p, uint64(i+1))
		p = wire.AppendBytes(p, m)
	}
	return wire.AppendFrame(nil, wire.TData, 0, p)
}

// expectClosed reads until the node closes the connection.
func expectClosed(t *testing.T, c net.Conn, r *wire.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
				return
			}
			t.Fatalf("want the node to close the connection, got %v", err)
		}
		_ = f
	}
}

func TestBadInputClosesOnlyThatConnection(t *testing.T) {
	dir := runtimeDir(t)
	rn := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := rn.Receive(ctx, "jobs", ChannelOptions{Capacity: 4, MaxMessageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	good := openNode(t, dir, Options{})
	gs, err := good.Sender(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, gs, 1)

	corrupt := func(b []byte, i int) []byte { b[i] ^= 0xff; return b }
	cases := map[string][]byte{
		"bad checksum": corrupt(attachFrame(1, kindChannel, "jobs"), wire.HeaderSize+2),
		"lying length": func() []byte {
			b := attachFrame(1, kindChannel, "jobs")
			binary.LittleEndian.PutUint32(b[4:], 1<<30)
			return b
		}(),
		"bad version":      corrupt(attachFrame(1, kindChannel, "jobs"), 0),
		"garbage":          bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64),
		"oversized record": append(attachFrame(1, kindChannel, "jobs"), dataFrame(1, make([]byte, 101))...),
		"credit overrun":   append(attachFrame(1, kindChannel, "jobs"), dataFrame(1, []byte("1"), []byte("2"), []byte("3"), []byte("4"), []byte("5"))...),
		"unknown type":     wire.AppendFrame(nil, wire.Type(200), 0, nil),
		"attachment flood": func() []byte {
			var b []byte
			for i := uint32(1); i <= maxAttachments+1; i++ {
				b = append(b, attachFrame(i, kindChannel, "jobs")...)
			}
			return b
		}(),
		"truncated attach": wire.AppendFrame(nil, wire.TAttach, 0, []byte{1, 5, 'c'}),
	}
	for _, scheme := range []string{"unix", "shm"} {
		for name, b := range cases {
			t.Run(scheme+"/"+name, func(t *testing.T) {
				c, rd := rawConn(t, rn, scheme)
				c.Write(b)
				expectClosed(t, c, rd)
			})
		}
	}
	// The node and the well-behaved sender carried on.
	if err := gs.Send(ctx, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	var m Message
	for {
		m, err = r.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) == "still here" {
			break
		}
	}
	if err := gs.Send(ctx, make([]byte, 101)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized send: want ErrTooLarge, got %v", err)
	}
}

func TestPolicies(t *testing.T) {
	dir := runtimeDir(t)
	rn := openNode(t, dir, Options{})
	sn := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("fail", func(t *testing.T) {
		r, _ := rn.Receive(ctx, "fail", ChannelOptions{Capacity: 2, OnFull: FailWhenFull})
		defer r.Close()
		s, _ := sn.Sender(ctx, "fail")
		defer s.Close()
		waitReceivers(t, s, 1)
		for i := 0; i < 2; i++ {
			if err := s.Send(ctx, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Send(ctx, []byte("x")); !errors.Is(err, ErrFull) {
			t.Fatalf("third send on a full capacity-2 channel: want ErrFull, got %v", err)
		}
		if err := s.TrySend([]byte("x")); !errors.Is(err, ErrFull) {
			t.Fatalf("TrySend: want ErrFull, got %v", err)
		}
		r.Recv(ctx)
		// The ack returns one credit.
		deadline := time.Now().Add(5 * time.Second)
		for s.TrySend([]byte("y")) != nil {
			if time.Now().After(deadline) {
				t.Fatal("credit never came back after a Recv")
			}
			time.Sleep(time.Millisecond)
		}
	})
	t.Run("drop-oldest", func(t *testing.T) {
		r, _ := rn.Receive(ctx, "drop", ChannelOptions{Capacity: 10, OnFull: DropOldest, Delivery: AtMostOnce})
		defer r.Close()
		s, _ := sn.Sender(ctx, "drop")
		defer s.Close()
		waitReceivers(t, s, 1)
		const N = 1000
		for i := 0; i < N; i++ {
			if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for r.Stats().Received < N {
			if time.Now().After(deadline) {
				t.Fatalf("received %d of %d", r.Stats().Received, N)
			}
			time.Sleep(time.Millisecond)
		}
		st := r.Stats()
		if st.Queued != 10 || st.Dropped != N-10 {
			t.Fatalf("want 10 queued and %d dropped, got %+v", N-10, st)
		}
		m, _ := r.Recv(ctx)
		if string(m.Data) != strconv.Itoa(N-10) {
			t.Fatalf("oldest kept message is %q, want %d", m.Data, N-10)
		}
	})
	t.Run("handle-backpressure", func(t *testing.T) {
		r, _ := rn.Receive(ctx, "handle", ChannelOptions{Capacity: 8})
		s, _ := sn.Sender(ctx, "handle")
		defer s.Close()
		waitReceivers(t, s, 1)
		var running, peak, total atomic.Int32
		hctx, hcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- r.Handle(hctx, 3, func(ctx context.Context, m Message) {
				n := running.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				running.Add(-1)
				total.Add(1)
			})
		}()
		for i := 0; i < 100; i++ {
			if err := s.Send(ctx, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if q := r.Stats().Queued; q > 8 {
				t.Fatalf("queue grew to %d past the capacity of 8", q)
			}
		}
		s.Flush(ctx)
		hcancel()
		<-done
		r.Close()
		if peak.Load() > 3 || total.Load() != 100 {
			t.Fatalf("peak concurrency %d (max 3), handled %d of 100", peak.Load(), total.Load())
		}
	})
}
