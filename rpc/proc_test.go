package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

var transports = []string{"shm", "unix", "tcp"}

// TestProcCall calls a server in another process by name (shm, unix) and
// by URL (tcp), with typed arguments and results.
func TestProcCall(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			dir := runtimeDir(t)
			_, _, tcp := startServer(t, dir, tr, "calc")
			n := openNode(t, dir, tr)
			c := dial(t, n, tr, "calc", tcp, rpc.ClientOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: 2, B: 40})
			if err != nil || got.Sum != 42 {
				t.Fatalf("Add(2, 40) = %+v, %v", got, err)
			}
			big := bytes.Repeat([]byte("x"), 1<<20)
			e, err := rpc.Call[EchoMsg, EchoMsg](ctx, c, "Echo", EchoMsg{Data: big, Text: "hi"})
			if err != nil || !bytes.Equal(e.Data, big) || e.Text != "hi" {
				t.Fatalf("Echo of 1 MiB: %d bytes, %q, %v", len(e.Data), e.Text, err)
			}
			// Errors with codes, matched with errors.Is and errors.As.
			_, err = rpc.Call[BlockReq, string](ctx, c, "Fail", BlockReq{Tag: "cheese"})
			var re *rpc.Error
			if !errors.Is(err, rpc.NotFound) || !errors.As(err, &re) || re.Message != "no cheese here" || re.Method != "Fail" {
				t.Fatalf("Fail: %v (%#v)", err, re)
			}
			_, err = rpc.Call[AddReq, AddResp](ctx, c, "Nope", AddReq{})
			if rpc.CodeOf(err) != rpc.NotFound {
				t.Fatalf("unknown method: %v", err)
			}
			// Arguments of the wrong type are refused, not half-decoded.
			_, err = rpc.Call[string, AddResp](ctx, c, "Add", "not a struct")
			if rpc.CodeOf(err) != rpc.InvalidArgument {
				t.Fatalf("bad arguments: %v", err)
			}
		})
	}
}

// TestProcConcurrent runs 64 calls at once on one client; the server
// answers them out of order (later calls sleep less).
func TestProcConcurrent(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			dir := runtimeDir(t)
			_, _, tcp := startServer(t, dir, tr, "calc")
			n := openNode(t, dir, tr)
			c := dial(t, n, tr, "calc", tcp, rpc.ClientOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{}); err != nil {
				t.Fatal(err)
			}
			const N = 64
			var mu sync.Mutex
			var order []int
			var wg sync.WaitGroup
			started := make(chan struct{})
			for i := range N {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-started
					got, err := rpc.Call[SleepReq, int](ctx, c, "Sleep", SleepReq{ID: i, Ms: 2 * (N - i)})
					if err != nil || got != i {
						t.Errorf("call %d: got %d, %v", i, got, err)
					}
					mu.Lock()
					order = append(order, i)
					mu.Unlock()
				}()
			}
			close(started)
			wg.Wait()
			inOrder := true
			for i := 1; i < len(order); i++ {
				if order[i] < order[i-1] {
					inOrder = false
				}
			}
			if len(order) != N || inOrder {
				t.Errorf("replies came back in issue order or some are missing: %v", order)
			}
		})
	}
}

// TestProcCancel cancels a call whose handler blocks until its context
// ends: the handler must see the cancellation.
func TestProcCancel(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			dir := runtimeDir(t)
			srv, _, tcp := startServer(t, dir, tr, "calc")
			n := openNode(t, dir, tr)
			c := dial(t, n, tr, "calc", tcp, rpc.ClientOptions{})
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := rpc.Call[BlockReq, string](ctx, c, "Block", BlockReq{Tag: "c1"})
				errc <- err
			}()
			if f := srv.expect("started"); f[0] != "c1" || f[1] != "false" {
				t.Fatalf("started %v, want c1 without deadline", f)
			}
			cancel()
			err := <-errc
			if !errors.Is(err, context.Canceled) || rpc.CodeOf(err) != rpc.Canceled {
				t.Fatalf("cancelled call returned %v", err)
			}
			if f := srv.expect("ended"); f[0] != "c1" || f[1] != "context" || f[2] != "canceled" {
				t.Fatalf("handler ended with %v, want context canceled", f)
			}
			// The connection lives on.
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer ccancel()
			if got, err := rpc.Call[AddReq, AddResp](cctx, c, "Add", AddReq{A: 1, B: 1}); err != nil || got.Sum != 2 {
				t.Fatalf("Add after cancel: %v %v", got, err)
			}
		})
	}
}

// TestProcDeadline gives a call a deadline: the handler's context carries
// it and ends with DeadlineExceeded; so does the call.
func TestProcDeadline(t *testing.T) {
	dir := runtimeDir(t)
	srv, _, _ := startServer(t, dir, "shm", "calc")
	n := openNode(t, dir, "shm")
	c := dial(t, n, "shm", "calc", "", rpc.ClientOptions{})
	warm, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if _, err := rpc.Call[AddReq, AddResp](warm, c, "Add", AddReq{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := rpc.Call[BlockReq, string](ctx, c, "Block", BlockReq{Tag: "d1"})
	el := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, rpc.DeadlineExceeded) {
		t.Fatalf("call with deadline returned %v", err)
	}
	if f := srv.expect("started"); f[0] != "d1" || f[1] != "true" {
		t.Fatalf("started %v, want d1 with a deadline", f)
	}
	if f := srv.expect("ended"); f[0] != "d1" || f[2] != "deadline" {
		t.Fatalf("handler ended with %v, want context deadline exceeded", f)
	}
	t.Logf("deadline call returned after %v", el)
	// A deadline that has passed before the server takes the call: the
	// handler does not run.
	past, pcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer pcancel()
	if _, err := rpc.Call[AddReq, AddResp](past, c, "Add", AddReq{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with a past deadline: %v", err)
	}
}

// TestProcPanic: a handler panics; the caller gets Internal and the
// server serves on.
func TestProcPanic(t *testing.T) {
	dir := runtimeDir(t)
	startServer(t, dir, "shm", "calc")
	n := openNode(t, dir, "shm")
	c := dial(t, n, "shm", "calc", "", rpc.ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 3 {
		_, err := rpc.Call[BlockReq, string](ctx, c, "Panic", BlockReq{Tag: fmt.Sprint(i)})
		var re *rpc.Error
		if !errors.As(err, &re) || re.Code != rpc.Internal || !bytes.Contains([]byte(re.Message), []byte("boom")) {
			t.Fatalf("panic %d: %v", i, err)
		}
		if got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: 1}); err != nil || got.Sum != i+1 {
			t.Fatalf("Add after panic: %v %v", got, err)
		}
	}
}

// TestProcServerKilled kills the server with SIGKILL while calls are
// pending: they fail fast with Unavailable wrapping loft.ErrPeerGone.
func TestProcServerKilled(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			dir := runtimeDir(t)
			srv, _, tcp := startServer(t, dir, tr, "calc")
			n := openNode(t, dir, tr)
			c := dial(t, n, tr, "calc", tcp, rpc.ClientOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const N = 4
			errc := make(chan error, N)
			for i := range N {
				go func() {
					_, err := rpc.Call[BlockReq, string](ctx, c, "Block", BlockReq{Tag: fmt.Sprint("k", i)})
					errc <- err
				}()
			}
			for range N {
				srv.expect("started")
			}
			killed := time.Now()
			if err := srv.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			var worst time.Duration
			for range N {
				err := <-errc
				lat := time.Since(killed)
				worst = max(worst, lat)
				if !errors.Is(err, rpc.Unavailable) || !errors.Is(err, loft.ErrPeerGone) {
					t.Fatalf("pending call after SIGKILL: %v", err)
				}
			}
			t.Logf("%s: %d pending calls failed %v after SIGKILL", tr, N, worst)
			if worst > 500*time.Millisecond {
				t.Errorf("pending calls took %v to fail after SIGKILL, want well under a second", worst)
			}
		})
	}
}

// TestProcBadEnvelopes sends garbage and lying envelopes to a server in
// another process: each gets an error reply where it names a reply
// address, none harms the server.
func TestProcBadEnvelopes(t *testing.T) {
	dir := runtimeDir(t)
	startServer(t, dir, "shm", "calc")
	n := openNode(t, dir, "shm")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	replyTo := "rpc.reply." + n.ID() + ".t" // servers answer only their callers' reply channels
	replies, err := n.Receive(ctx, replyTo, loft.ChannelOptions{Capacity: 64, Delivery: loft.AtMostOnce})
	if err != nil {
		t.Fatal(err)
	}
	s, err := n.Sender(ctx, rpc.SharedName("calc"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	call := func(replyTo, method string, payload []byte) []byte {
		if len(replyTo) > 127 || len(method) > 127 {
			panic("one-byte lengths only")
		}
		b := []byte{1, 1, 0, 1, 7} // version 1, CALL, no flags, CBOR, id 7
		b = append(b, byte(len(replyTo)))
		b = append(b, replyTo...)
		b = append(b, byte(len(method)))
		b = append(b, method...)
		b = append(b, 0) // no capabilities
		return append(b, payload...)
	}
	silent := [][]byte{
		nil,
		{0xff},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{1, 9, 0, 0, 1}, // unknown kind
		{1, 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // overlong varint
		{1, 1, 0, 1, 7, 0x80, 0x80, 0x04, 'x'},                                         // reply address claims 64 KiB
		{1, 4, 0, 0, 2, 100, 1},                                                        // batch entry claims 100 bytes
		{1, 2, 0, 1, 7, 0, 0, 0},                                                       // a reply sent to a server
	}
	// Calls whose reply address is not the sender's are dropped.
	silent = append(silent, call("rpc.reply.someone-else.x", "Add", []byte{0xa0}), call("jobs", "Add", []byte{0xa0}))
	for _, m := range silent {
		if err := s.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	answered := []struct {
		msg  []byte
		code rpc.Code
	}{
		{call(replyTo, "Add", []byte{0xbf, 0xff, 0xff}), rpc.InvalidArgument},                                     // broken CBOR
		{call(replyTo, "Add", []byte{0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), rpc.InvalidArgument}, // array claims 2^64 elements
		{call(replyTo, "Add", []byte{0x58, 0xff, 'x'}), rpc.InvalidArgument},                                      // byte string claims 255 bytes
		{append(call(replyTo, "Add", nil)[:len(call(replyTo, "Add", nil))-1], 5), rpc.InvalidArgument},            // capabilities
		{func() []byte { b := call(replyTo, "Add", nil); b[2] = 0x80; return b }(), rpc.InvalidArgument},          // unknown flag
		{call(replyTo, "Add", nil)[:4+1+1+len(replyTo)+1+2], rpc.InvalidArgument},                                 // method claims 3 bytes, 2 left
		{func() []byte { b := call(replyTo, "Add", []byte{0xa0}); b[3] = 99; return b }(), rpc.Unimplemented},     // unknown codec
	}
	for _, a := range answered {
		if err := s.Send(ctx, a.msg); err != nil {
			t.Fatal(err)
		}
		m, err := replies.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) < 7 || m.Data[0] != 1 || m.Data[1] != 2 || m.Data[4] != 7 || rpc.Code(m.Data[5]) != a.code {
			t.Fatalf("reply to % x: % x, want code %v", a.msg, m.Data, a.code)
		}
		t.Logf("%v: %s", a.code, m.Data[7:])
	}
	// The server is fine.
	c := dial(t, n, "shm", "calc", "", rpc.ClientOptions{})
	if got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: 3, B: 4}); err != nil || got.Sum != 7 {
		t.Fatalf("Add after garbage: %v %v", got, err)
	}
}

// TestProcWatch watches a service by name: Up when a server starts, Down
// when it is killed.
func TestProcWatch(t *testing.T) {
	dir := runtimeDir(t)
	n := openNode(t, dir, "shm")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ev, err := rpc.Watch(ctx, n, "calc")
	if err != nil {
		t.Fatal(err)
	}
	srv, id, _ := startServer(t, dir, "shm", "calc")
	if e := <-ev; e.Kind != loft.Up || e.Node != id {
		t.Fatalf("event %+v, want up of %s", e, id)
	}
	srv.Cmd.Process.Signal(syscall.SIGKILL)
	if e := <-ev; e.Kind != loft.Down || e.Node != id {
		t.Fatalf("event %+v, want down of %s", e, id)
	}
	cancel()
	for range ev {
	}
}
