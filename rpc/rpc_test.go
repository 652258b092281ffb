package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

// inProcess starts a server of "calc" and a client on one node.
func inProcess(t *testing.T, sopts rpc.ServerOptions, copts rpc.ClientOptions) (*rpc.Server, *rpc.Client) {
	t.Helper()
	n := openNode(t, runtimeDir(t), "shm")
	s, err := rpc.NewServer(n, "calc", sopts)
	if err != nil {
		t.Fatal(err)
	}
	if err := registerCalc(s); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dial(t, n, "shm", "calc", "", copts)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestInProcessCall(t *testing.T) {
	s, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	for i := range 100 {
		got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: i})
		if err != nil || got.Sum != 2*i {
			t.Fatalf("Add(%d, %d) = %v, %v", i, i, got, err)
		}
	}
	if st := s.Stats(); st.Calls != 100 || st.Errors != 0 || st.Peers != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestFutures(t *testing.T) {
	_, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	var fs []*rpc.Future[AddResp]
	for i := range 50 {
		fs = append(fs, rpc.Go[AddReq, AddResp](ctx, c, "Add", AddReq{A: i, B: 1}))
	}
	for i, f := range fs {
		got, err := f.Wait(ctx)
		if err != nil || got.Sum != i+1 {
			t.Fatalf("future %d: %v %v", i, got, err)
		}
		if again, err := f.Wait(ctx); err != nil || again != got {
			t.Fatalf("second Wait: %v %v", again, err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	rpc.Go[SleepReq, int](ctx, c, "Sleep", SleepReq{ID: 7, Ms: 1}).Then(func(v int, err error) {
		defer wg.Done()
		if v != 7 || err != nil {
			t.Errorf("Then got %v %v", v, err)
		}
	})
	wg.Wait()
	// Wait's context bounds the wait only; the call's own context cancels.
	cctx, cancel := context.WithCancel(ctx)
	f := rpc.Go[SleepReq, int](cctx, c, "Sleep", SleepReq{ID: 1, Ms: 60_000})
	short, scancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer scancel()
	if _, err := f.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with a short context: %v", err)
	}
	cancel()
	<-f.Done()
	if _, err := f.Wait(ctx); !errors.Is(err, rpc.Canceled) {
		t.Fatalf("cancelled future: %v", err)
	}
}

func TestBatch(t *testing.T) {
	s, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	b := c.NewBatch()
	var fs []*rpc.Future[AddResp]
	for i := range 200 {
		fs = append(fs, rpc.Enqueue[AddReq, AddResp](b, "Add", AddReq{A: i, B: 2}))
	}
	bad := rpc.Enqueue[BlockReq, string](b, "Fail", BlockReq{Tag: "x"})
	if b.Len() != 201 {
		t.Fatalf("Len = %d", b.Len())
	}
	if err := b.Send(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		if got, err := f.Wait(ctx); err != nil || got.Sum != i+2 {
			t.Fatalf("batched call %d: %v %v", i, got, err)
		}
	}
	if _, err := bad.Wait(ctx); !errors.Is(err, rpc.NotFound) {
		t.Fatalf("batched Fail: %v", err)
	}
	if err := b.Send(ctx); rpc.CodeOf(err) != rpc.FailedPrecondition {
		t.Fatalf("second Send: %v", err)
	}
	if st := s.Stats(); st.Calls != 201 {
		t.Errorf("server saw %d calls", st.Calls)
	}
}

func TestCallJSONAndDescribe(t *testing.T) {
	_, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	out, err := c.CallJSON(ctx, "Add", []byte(`{"A": 20, "B": 22}`))
	if err != nil || strings.TrimSpace(string(out)) != `{"Sum":42}` {
		t.Fatalf("CallJSON: %s %v", out, err)
	}
	if _, err := c.CallJSON(ctx, "Add", []byte(`{"A": 1, "C": 2}`)); rpc.CodeOf(err) != rpc.InvalidArgument {
		t.Fatalf("unknown JSON field: %v", err)
	}
	if _, err := c.CallJSON(ctx, "Add", []byte(`{"A": 1`)); rpc.CodeOf(err) != rpc.InvalidArgument {
		t.Fatalf("broken JSON: %v", err)
	}
	info, err := c.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Service != "calc" || info.Codec != "cbor" || len(info.Methods) != 6 || info.Methods[0].Name != "Add" ||
		info.Methods[0].Request.Go != "rpc_test.AddReq" || info.Methods[0].Request.JSON != `{"A": int, "B": int}` {
		b, _ := json.MarshalIndent(info, "", "  ")
		t.Fatalf("description:\n%s", b)
	}
}

func TestProtoAndJSONServices(t *testing.T) {
	n := openNode(t, runtimeDir(t), "shm")
	ctx := testCtx(t)
	ps, err := rpc.NewServer(n, "upper", rpc.ServerOptions{Codec: rpc.Proto})
	if err != nil {
		t.Fatal(err)
	}
	if err := rpc.Register(ps, "Upper", func(ctx context.Context, s *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		return wrapperspb.String(strings.ToUpper(s.GetValue())), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := rpc.Register(ps, "Bad", func(ctx context.Context, s AddReq) (AddResp, error) { return AddResp{}, nil }); err == nil {
		t.Fatal("proto service accepted a non-proto type")
	}
	if err := ps.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	pc, err := rpc.Dial(ctx, n, "upper", rpc.ClientOptions{Codec: rpc.Proto})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got, err := rpc.Call[*wrapperspb.StringValue, *wrapperspb.StringValue](ctx, pc, "Upper", wrapperspb.String("loft"))
	if err != nil || got.GetValue() != "LOFT" {
		t.Fatalf("Upper: %v %v", got, err)
	}
	out, err := pc.CallJSON(ctx, "Upper", []byte(`"json"`))
	if err != nil || strings.ReplaceAll(string(out), " ", "") != `"JSON"` {
		t.Fatalf("Upper over JSON: %s %v", out, err)
	}
	// A client with the wrong codec is told so.
	wc, err := rpc.Dial(ctx, n, "upper", rpc.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	if _, err := rpc.Call[string, string](ctx, wc, "Upper", "x"); rpc.CodeOf(err) != rpc.Unimplemented {
		t.Fatalf("CBOR call to a proto service: %v", err)
	}

	js, err := rpc.NewServer(n, "j", rpc.ServerOptions{Codec: rpc.JSON})
	if err != nil {
		t.Fatal(err)
	}
	rpc.Register(js, "Add", func(ctx context.Context, r AddReq) (AddResp, error) { return AddResp{r.A + r.B}, nil })
	if err := js.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	jc, err := rpc.Dial(ctx, n, "j", rpc.ClientOptions{Codec: rpc.JSON})
	if err != nil {
		t.Fatal(err)
	}
	defer jc.Close()
	if r, err := rpc.Call[AddReq, AddResp](ctx, jc, "Add", AddReq{2, 3}); err != nil || r.Sum != 5 {
		t.Fatalf("JSON service: %v %v", r, err)
	}
}

func TestCodecsRoundTrip(t *testing.T) {
	type inner struct {
		X []byte
		Y map[string]int
	}
	type args struct {
		I  int64
		U  uint8
		F  float64
		S  string
		B  bool
		L  []string
		P  *inner
		T  time.Time
		D  time.Duration
		In inner
	}
	v := args{I: -5, U: 200, F: 1.5, S: "héllo", B: true, L: []string{"a", "b"}, P: &inner{X: []byte{0, 1}},
		T: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), D: time.Second, In: inner{Y: map[string]int{"k": 1}}}
	for _, c := range []rpc.Codec{rpc.CBOR, rpc.JSON} {
		b, err := c.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got args
		if err := c.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		if got.I != v.I || got.U != v.U || got.F != v.F || got.S != v.S || !got.B || len(got.L) != 2 || got.P == nil ||
			string(got.P.X) != "\x00\x01" || !got.T.Equal(v.T) || got.D != v.D || got.In.Y["k"] != 1 {
			t.Errorf("%s round trip: %+v", c.Name(), got)
		}
	}
	m := wrapperspb.Int64(-77)
	b, err := rpc.Proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var p *wrapperspb.Int64Value
	if err := rpc.Proto.Unmarshal(b, &p); err != nil || !proto.Equal(p, m) {
		t.Fatalf("proto round trip: %v %v", p, err)
	}
	if _, err := rpc.Proto.Marshal(AddReq{}); err == nil {
		t.Error("proto codec encoded a plain struct")
	}
}

func TestCBORLimits(t *testing.T) {
	big := make([]int, 100_000)
	b, _ := rpc.CBOR.Marshal(big)
	var got []int
	if err := rpc.CBOR.Unmarshal(b, &got); err == nil {
		t.Error("CBOR decoded an array of 100,000 elements with the default limits")
	}
	loose, err := rpc.NewCBOR(rpc.CBORLimits{MaxArrayElements: 200_000})
	if err != nil {
		t.Fatal(err)
	}
	if err := loose.Unmarshal(b, &got); err != nil || len(got) != len(big) {
		t.Errorf("with a higher limit: %d, %v", len(got), err)
	}
	deep := strings.Repeat("\x81", 40) + "\x00" // 40 nested arrays
	var v any
	if err := rpc.CBOR.Unmarshal([]byte(deep), &v); err == nil {
		t.Error("CBOR decoded 40 nested levels with the default limit")
	}
	if _, err := rpc.NewCBOR(rpc.CBORLimits{MaxNestedLevels: 1}); err == nil {
		t.Error("NewCBOR accepted a nesting limit of 1")
	}
	dup := []byte{0xa2, 0x61, 'A', 0x01, 0x61, 'A', 0x02} // {"A": 1, "A": 2}
	var a AddReq
	if err := rpc.CBOR.Unmarshal(dup, &a); err == nil {
		t.Error("CBOR accepted a duplicate map key")
	}
}

func TestLimits(t *testing.T) {
	s, c := inProcess(t, rpc.ServerOptions{MaxInFlight: 2, MaxMessageSize: 1 << 10}, rpc.ClientOptions{})
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fs []*rpc.Future[int]
	for i := range 2 {
		fs = append(fs, rpc.Go[SleepReq, int](cctx, c, "Sleep", SleepReq{ID: i, Ms: 60_000}))
	}
	// The third concurrent call from this client is refused.
	for s.Stats().Running < 2 {
		select {
		case <-ctx.Done():
			t.Fatal("the two sleeping calls did not start")
		case <-time.After(time.Millisecond):
		}
	}
	_, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{})
	if !errors.Is(err, rpc.ResourceExhausted) {
		t.Fatalf("third call: %v", err)
	}
	cancel()
	for _, f := range fs {
		<-f.Done()
	}
	// Too large for the server's limit: refused by the client's sender.
	_, err = rpc.Call[EchoMsg, EchoMsg](ctx, c, "Echo", EchoMsg{Data: make([]byte, 8<<10)})
	if !errors.Is(err, rpc.ResourceExhausted) || !errors.Is(err, loft.ErrTooLarge) {
		t.Fatalf("large call: %v", err)
	}
	// A result over the server's limit becomes an error.
	_, err = rpc.Call[EchoMsg, EchoMsg](ctx, c, "Echo", EchoMsg{Text: strings.Repeat("x", 1500)})
	if !errors.Is(err, rpc.ResourceExhausted) {
		t.Fatalf("large call: %v", err)
	}
}

func TestClientClose(t *testing.T) {
	_, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	f := rpc.Go[SleepReq, int](ctx, c, "Sleep", SleepReq{Ms: 60_000})
	c.Close()
	if _, err := f.Wait(ctx); !errors.Is(err, rpc.ErrClientClosed) || rpc.CodeOf(err) != rpc.Canceled {
		t.Fatalf("pending call after Close: %v", err)
	}
	if _, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{}); !errors.Is(err, rpc.ErrClientClosed) {
		t.Fatalf("call after Close: %v", err)
	}
}

func TestServerShutdown(t *testing.T) {
	s, c := inProcess(t, rpc.ServerOptions{}, rpc.ClientOptions{})
	ctx := testCtx(t)
	if _, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{}); err != nil {
		t.Fatal(err)
	}
	f := rpc.Go[SleepReq, int](ctx, c, "Sleep", SleepReq{ID: 3, Ms: 100})
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := f.Wait(ctx); err != nil || v != 3 {
		t.Fatalf("call in flight during Shutdown: %v %v", v, err)
	}
	// No server now: a call waits for one until its context ends.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := rpc.Call[AddReq, AddResp](short, c, "Add", AddReq{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with no server: %v", err)
	}
}

func TestErrors(t *testing.T) {
	e := rpc.Errorf(rpc.NotFound, "no %s", "x")
	var err error = e
	if !errors.Is(err, rpc.NotFound) || errors.Is(err, rpc.Internal) || e.Error() != "rpc: not found: no x" {
		t.Errorf("Errorf: %v", err)
	}
	if rpc.CodeOf(nil) != rpc.OK || rpc.CodeOf(context.Canceled) != rpc.Canceled || rpc.CodeOf(errors.New("x")) != rpc.Unknown ||
		rpc.CodeOf(loft.ErrPeerGone) != rpc.Unavailable {
		t.Error("CodeOf")
	}
	if !errors.Is(&rpc.Error{Code: rpc.DeadlineExceeded}, context.DeadlineExceeded) {
		t.Error("DeadlineExceeded does not match context.DeadlineExceeded")
	}
	if rpc.Code(99).String() != "code 99" {
		t.Error(rpc.Code(99).String())
	}
	if _, err := rpc.NewServer(nil, "reply.x", rpc.ServerOptions{}); err == nil {
		t.Error("reserved service name accepted")
	}
}

// TestCompetingServers: two server processes share a service; calls are
// spread over both; when one is killed only its calls fail, and a
// cancel reaches the server that holds the call.
func TestCompetingServers(t *testing.T) {
	dir := runtimeDir(t)
	a, idA, _ := startServer(t, dir, "shm", "calc")
	b, idB, _ := startServer(t, dir, "shm", "calc")
	n := openNode(t, dir, "shm")
	c := dial(t, n, "shm", "calc", "", rpc.ClientOptions{})
	ctx := testCtx(t)
	for len(c.Servers()) < 2 { // wait for the client to see both
		select {
		case <-ctx.Done():
			t.Fatal("client did not find both servers")
		case <-time.After(time.Millisecond):
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const N = 6
	var fs []*rpc.Future[string]
	for i := range N {
		fs = append(fs, rpc.Go[BlockReq, string](cctx, c, "Block", BlockReq{Tag: string(rune('a' + i))}))
	}
	onA := 0
	for range N / 2 {
		a.expect("started")
		onA++
	}
	for range N / 2 {
		b.expect("started")
	}
	t.Logf("%d calls on %s, %d on %s", onA, idA, N-onA, idB)
	a.Cmd.Process.Kill()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, N)
	for i, f := range fs {
		go func() {
			_, err := f.Wait(ctx)
			results <- result{i, err}
		}()
	}
	failed := map[int]bool{}
	for range N / 2 {
		r := <-results
		if !errors.Is(r.err, loft.ErrPeerGone) || !errors.Is(r.err, rpc.Unavailable) {
			t.Fatalf("call %d finished with %v, want Unavailable", r.i, r.err)
		}
		failed[r.i] = true
	}
	// The calls on the surviving server are still pending: cancel them.
	cancel()
	for range N / 2 {
		r := <-results
		if failed[r.i] || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("call %d on the surviving server finished with %v, want Canceled", r.i, r.err)
		}
	}
	for range N / 2 {
		if f := b.expect("ended"); f[1] != "context" {
			t.Fatalf("surviving server's handler ended with %v", f)
		}
	}
	if got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: 1, B: 2}); err != nil || got.Sum != 3 {
		t.Fatalf("call after one server died: %v %v", got, err)
	}
}

// TestTwoNodesOneProcess calls between two nodes of one process (loft's
// in-process transport), by name.
func TestTwoNodesOneProcess(t *testing.T) {
	dir := runtimeDir(t)
	sn := openNode(t, dir, "shm")
	cn := openNode(t, dir, "shm")
	ctx := testCtx(t)
	s, err := rpc.NewServer(sn, "calc", rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := registerCalc(s); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dial(t, cn, "shm", "calc", "", rpc.ClientOptions{})
	if got, err := rpc.Call[AddReq, AddResp](ctx, c, "Add", AddReq{A: 4, B: 5}); err != nil || got.Sum != 9 {
		t.Fatalf("Add: %v %v", got, err)
	}
	if ids := c.Servers(); len(ids) != 1 || ids[0] != sn.ID() {
		t.Fatalf("Servers() = %v, want [%s]", ids, sn.ID())
	}
	// Closing the server fails the calls it was running with Unavailable.
	f := rpc.Go[SleepReq, int](ctx, c, "Sleep", SleepReq{ID: 1, Ms: 60_000})
	s.Close()
	if _, err := f.Wait(ctx); !errors.Is(err, rpc.Unavailable) {
		t.Fatalf("call pending when its server closed: %v", err)
	}
}
