package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	MaybeRunChild()
	os.Exit(m.Run())
}

// testBudget is small; smaller still under the race detector.
func testBudget() time.Duration {
	if raceEnabled {
		return 30 * time.Millisecond
	}
	return 60 * time.Millisecond
}

// childrenOf lists the processes (zombies included) whose parent is pid.
func childrenOf(t *testing.T, pid int) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		t.Skip("no /proc")
	}
	var kids []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, strings.TrimSpace(s[:i+1])+" "+f[0])
		}
	}
	return kids
}

func checkNoChildren(t *testing.T) {
	t.Helper()
	if n := liveChildren.Load(); n != 0 {
		t.Errorf("%d children not reaped", n)
	}
	if kids := childrenOf(t, os.Getpid()); len(kids) != 0 {
		t.Errorf("child processes left: %v", kids)
	}
}

func TestRunQuick(t *testing.T) {
	var js, table bytes.Buffer
	res, err := Run(context.Background(), Options{
		Quick:  true,
		Budget: testBudget(),
		Filter: `^(raw/unix/(oneway|pingpong)|raw-batched/pipe/oneway|go-chan/inproc/(oneway|pingpong))/64$`,
		Sizes:  []int{64},
		JSON:   &js,
		Table:  &table,
	})
	t.Logf("table:\n%s", table.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("got %d results, want 5: %+v", len(res), res)
	}
	for _, r := range res {
		if r.Err != "" || r.Msgs <= 0 || r.MsgsPerS <= 0 || r.MBPerS <= 0 || r.Round != 1 || r.Size != 64 || r.Mode != "blocking" {
			t.Errorf("bad result %+v", r)
		}
		if r.Pattern == "pingpong" && (r.P50ns <= 0 || r.P99ns < r.P50ns) {
			t.Errorf("bad latencies %+v", r)
		}
	}
	lines := strings.Split(strings.TrimSpace(js.String()), "\n")
	if len(lines) != len(res) {
		t.Errorf("%d JSON lines for %d results", len(lines), len(res))
	}
	for _, l := range lines {
		var r Result
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.System == "" {
			t.Errorf("bad JSON line %q: %v", l, err)
		}
	}
	if !strings.Contains(table.String(), "VS RAW") || !strings.Contains(table.String(), "1.00x") {
		t.Errorf("table lacks the vs-raw column:\n%s", table.String())
	}
	checkNoChildren(t)
}

// TestLoftOnewayCosts: loft's one-way cases report each side's CPU time
// and allocations per message, and a stream of small messages allocates
// nothing per message on either side (what little is allocated is set-up,
// spread over the messages of a short run).
func TestLoftOnewayCosts(t *testing.T) {
	r := runOne(t, `^loft/unix/oneway/64$`)
	t.Logf("%d messages: send %.0f ns and %.4f allocations, receive %.0f ns and %.4f allocations per message", r.Msgs, r.SendCPUns, r.SendAllocs, r.RecvCPUns, r.RecvAllocs)
	if r.SendCPUns <= 0 || r.RecvCPUns <= 0 {
		t.Errorf("CPU per message not measured: %+v", r)
	}
	if r.Msgs > 10000 && (r.SendAllocs > 0.05 || r.RecvAllocs > 0.05) {
		t.Errorf("a stream of 64-byte messages allocates per message: %+v", r)
	}
	checkNoChildren(t)
}

// runOne runs the one 64-byte case that filter selects, quickly, and
// returns its result.
func runOne(t *testing.T, filter string) Result {
	t.Helper()
	res, err := Run(context.Background(), Options{Quick: true, Budget: testBudget(), Filter: filter, Sizes: []int{64}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Err != "" {
		t.Fatalf("results %+v", res)
	}
	return res[0]
}

// TestLoftPingPongPaired: loft's ping-pong over a Unix socket also times a
// raw socket ping-pong between the same two processes.
func TestLoftPingPongPaired(t *testing.T) {
	r := runOne(t, `^loft/unix/pingpong/64$`)
	t.Logf("loft p50 %d ns, raw in the same processes %d ns", r.P50ns, r.PairRawP50ns)
	if r.P50ns <= 0 || r.PairRawP50ns <= 0 || r.PairRawP99ns < r.PairRawP50ns {
		t.Errorf("paired raw ping-pong not measured: %+v", r)
	}
	checkNoChildren(t)
}

// TestMeasurePaired: both sides run, in alternating blocks, each for
// about the budget.
func TestMeasurePaired(t *testing.T) {
	var seq []byte
	var na, nb int64
	a := func() error { na++; seq = append(seq, 'a'); return nil }
	b := func() error { nb++; seq = append(seq, 'b'); return nil }
	ra, rb, err := MeasurePaired(context.Background(), 20*time.Millisecond, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Msgs <= 0 || rb.Msgs <= 0 || ra.Msgs > na || rb.Msgs > nb || ra.P50ns <= 0 || rb.P50ns <= 0 {
		t.Fatalf("results %+v and %+v after %d and %d calls", ra, rb, na, nb)
	}
	// After the warm-ups, blocks of pairBlock alternate.
	measured := string(seq[len(seq)-int(ra.Msgs+rb.Msgs):])
	for i := 0; i < len(measured); i += pairBlock {
		want := byte('a' + (i/pairBlock)%2)
		if blk := measured[i : i+pairBlock]; strings.Count(blk, string(want)) != pairBlock {
			t.Fatalf("block %d is not all %c", i/pairBlock, want)
		}
	}
	wantErr := errors.New("broken")
	if _, _, err := MeasurePaired(context.Background(), time.Second, a, func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("error from a side: %v", err)
	}
}

// Test-only roles: one fails, one hangs.
func init() {
	RegisterRole("test-fail", func(ctx context.Context, args []string) error {
		os.Stderr.WriteString("some diagnostic\n")
		return os.ErrPermission
	})
	RegisterRole("test-hang", func(ctx context.Context, args []string) error {
		ToParent("ready")
		select {} // ignores ctx: the parent, or the child's own watchdog, must kill it
	})
}

func TestChildErrorCarriesStderr(t *testing.T) {
	c := Case{System: "t", Transport: "t", Pattern: "oneway", Mode: "blocking",
		Run: func(ctx context.Context, env Env) (Result, error) {
			ch, err := env.Spawn(ctx, "test-fail")
			if err != nil {
				return Result{}, err
			}
			_, err = ch.Expect(ctx, "ready")
			return Result{}, err
		}}
	res, err := run(context.Background(), []Case{c}, Options{Budget: testBudget(), Rounds: 1, Sizes: []int{64}})
	if err == nil || len(res) != 1 {
		t.Fatalf("want one failed result, got %v, %+v", err, res)
	}
	for _, want := range []string{"some diagnostic", "permission denied", "exit status 1"} {
		if !strings.Contains(res[0].Err, want) {
			t.Errorf("error %q lacks %q", res[0].Err, want)
		}
	}
	checkNoChildren(t)
}

func TestHungChildIsKilled(t *testing.T) {
	defer func(s time.Duration) { caseSlack = s }(caseSlack)
	caseSlack = 500 * time.Millisecond
	c := Case{System: "t", Transport: "t", Pattern: "oneway", Mode: "blocking",
		Run: func(ctx context.Context, env Env) (Result, error) {
			ch, err := env.Spawn(ctx, "test-hang")
			if err != nil {
				return Result{}, err
			}
			if _, err := ch.Expect(ctx, "ready"); err != nil {
				return Result{}, err
			}
			_, err = ch.Expect(ctx, "done") // never comes
			return Result{}, err
		}}
	start := time.Now()
	res, err := run(context.Background(), []Case{c}, Options{Budget: 50 * time.Millisecond, Rounds: 1, Sizes: []int{64}})
	if err == nil || len(res) != 1 || !strings.Contains(res[0].Err, "time limit") {
		t.Fatalf("want a time-limit failure, got %v, %+v", err, res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
	checkNoChildren(t)
}

func TestTable(t *testing.T) {
	rs := []Result{
		{System: "raw", Transport: "unix", Pattern: "oneway", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 100, Round: 1},
		{System: "raw", Transport: "unix", Pattern: "oneway", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 300, Round: 2},
		{System: "raw", Transport: "unix", Pattern: "oneway", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 200, Round: 3},
		{System: "loft", Transport: "shm", Pattern: "oneway", Size: 64, Mode: "polling", Msgs: 1, MsgsPerS: 1000, Round: 1},
		{System: "go-chan", Transport: "inproc", Pattern: "oneway", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 1000, Round: 1},
		{System: "x", Transport: "unix", Pattern: "oneway", Size: 64, Mode: "blocking", Err: "boom", Round: 1},
	}
	cases := []Case{{System: "loft", Transport: "shm", Pattern: "oneway", RawTransport: "unix"}}
	var b bytes.Buffer
	if err := writeTable(&b, rs, cases); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{"200", "1.00x", "5.00x", "3/3", "0/1", "error: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "go-chan") && strings.Contains(l, "x ") {
			t.Errorf("inproc row has a vs-raw ratio: %q", l)
		}
	}
}

func TestSelectCases(t *testing.T) {
	all := []Case{
		{System: "a", Transport: "unix", Pattern: "oneway", Run: nil},
		{System: "b", Transport: "unix", Pattern: "oneway", MaxSize: 4096},
		{System: "c", Transport: "unix", Pattern: "oneway", Size: 64},
	}
	got, err := selectCases(all, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range got {
		names = append(names, c.Name())
	}
	want := "a/unix/oneway/64 a/unix/oneway/4096 a/unix/oneway/1048576 b/unix/oneway/64 b/unix/oneway/4096 c/unix/oneway/64"
	if strings.Join(names, " ") != want {
		t.Errorf("got %v", names)
	}
	got, _ = selectCases(all, Options{Filter: "^b/.*/64$"})
	if len(got) != 1 || got[0].System != "b" {
		t.Errorf("regexp filter: %v", got)
	}
	got, _ = selectCases(all, Options{Filter: "a/unix/oneway/1048576"})
	if len(got) != 1 {
		t.Errorf("substring filter: %v", got)
	}
	if _, err := selectCases(all, Options{Filter: "nothing"}); err == nil {
		t.Error("empty selection is not an error")
	}
}

// BenchmarkCases runs every registered case with a tiny budget, so that the
// cases cannot rot. Use -benchtime=1x for a single pass; the reported
// msgs/s, MB/s and p50-ns are from the last iteration.
func BenchmarkCases(b *testing.B) {
	cases, err := selectCases(Cases(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cases {
		b.Run(c.Name(), func(b *testing.B) {
			var r Result
			for b.Loop() {
				r = runCase(context.Background(), c, 20*time.Millisecond, true)
				if r.Err != "" {
					// One more try: on a loaded machine a case can time out
					// once (seen: an rmi Lookup over a Unix socket, 2 runs in
					// 309, not reproduced since); one that is broken fails twice.
					b.Logf("first try failed, trying again: %s", r.Err)
					if r = runCase(context.Background(), c, 20*time.Millisecond, true); r.Err != "" {
						b.Fatal(r.Err)
					}
				}
			}
			b.ReportMetric(r.MsgsPerS, "msgs/s")
			b.ReportMetric(r.MBPerS, "MB/s")
			if r.P50ns > 0 {
				b.ReportMetric(float64(r.P50ns), "p50-ns")
			}
		})
	}
}

func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, Options{Budget: 2 * time.Second, Filter: `^raw/(unix|pipe)/pingpong/64$`, Sizes: []int{64}})
	if err != context.DeadlineExceeded {
		t.Errorf("got error %v, want %v", err, context.DeadlineExceeded)
	}
	if len(res) != 0 {
		t.Errorf("interrupted rounds were reported: %+v", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	checkNoChildren(t)
}

// TestMarkdown: rows are compared with their baselines (raw transport,
// gRPC and net/rpc, one plain remote call), and JSON lines read back give
// the same table.
func TestMarkdown(t *testing.T) {
	rs := []Result{
		{System: "raw", Transport: "unix", Pattern: "pingpong", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 100, P50ns: 20000, Round: 1},
		{System: "loft", Transport: "shm", Pattern: "pingpong", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 400, P50ns: 5000, Round: 1},
		{System: "loft", Transport: "unix", Pattern: "pingpong", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 90, P50ns: 24000, PairRawP50ns: 16000, Round: 1},
		{System: "grpc", Transport: "unix", Pattern: "call", Size: 64, Mode: "blocking", Inflight: 64, Msgs: 1, MsgsPerS: 1000, P50ns: 8000, Round: 1},
		{System: "net/rpc", Transport: "unix", Pattern: "call", Size: 64, Mode: "blocking", Inflight: 64, Msgs: 1, MsgsPerS: 2000, P50ns: 4000, Round: 1},
		{System: "loft-rpc", Transport: "unix", Pattern: "call", Size: 64, Mode: "blocking", Inflight: 64, Msgs: 1, MsgsPerS: 3000, P50ns: 2000, Round: 1},
		{System: "loft-rmi", Transport: "unix", Pattern: "call", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 10, P50ns: 10000, Round: 1},
		{System: "loft-rmi", Transport: "unix", Pattern: "pipeline5", Size: 64, Mode: "blocking", Msgs: 1, MsgsPerS: 10, P50ns: 14000, Round: 1},
	}
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	for _, r := range rs {
		enc.Encode(r)
	}
	back, err := ReadJSON(&js)
	if err != nil || len(back) != len(rs) {
		t.Fatalf("ReadJSON: %d results, %v", len(back), err)
	}
	var b bytes.Buffer
	if err := WriteMarkdown(&b, back); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"msgs/s 4.00x raw unix, p50 0.25x",             // shared memory against raw Unix
		"p50 1.20x (1.50x raw in the same processes)",  // loft against raw in one pair of processes
		"p50 0.25x, calls/s 3.00x gRPC, 1.50x net/rpc", // RPC
		"p50 1.40x one call",                           // remote objects
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if _, err := ReadJSON(strings.NewReader("{not json")); err == nil {
		t.Error("ReadJSON accepted garbage")
	}
}

// TestWarmupRunsFirstCaseUnreported: the first case runs once before the
// first round and nothing of that run is reported; NoWarmup skips it.
func TestWarmupRunsFirstCaseUnreported(t *testing.T) {
	for _, skip := range []bool{false, true} {
		var runs [2]int
		mk := func(i int) Case {
			return Case{System: fmt.Sprint("s", i), Transport: "t", Pattern: "oneway", Mode: "blocking",
				Run: func(ctx context.Context, env Env) (Result, error) {
					runs[i]++
					return Result{Msgs: 1, MsgsPerS: float64(runs[i])}, nil
				}}
		}
		var js bytes.Buffer
		res, err := run(context.Background(), []Case{mk(0), mk(1)}, Options{Budget: testBudget(), Rounds: 2, Sizes: []int{64}, JSON: &js, NoWarmup: skip})
		if err != nil || len(res) != 4 {
			t.Fatalf("NoWarmup %v: %v, %d results, want 4", skip, err, len(res))
		}
		want0 := 3
		if skip {
			want0 = 2
		}
		if runs[0] != want0 || runs[1] != 2 {
			t.Fatalf("NoWarmup %v: the cases ran %v times, want [%d 2]", skip, runs, want0)
		}
		if n := strings.Count(js.String(), "\n"); n != 4 {
			t.Fatalf("NoWarmup %v: %d JSON lines, want 4", skip, n)
		}
		// Round 1 of the first case is its second run when warmed up.
		if got := res[0].MsgsPerS; got != float64(want0-1) {
			t.Fatalf("NoWarmup %v: round 1 of the first case reports run %v, want %d", skip, got, want0-1)
		}
	}
}
