package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/internal/cli"
)

// With LOFT_CLI_TEST_MAIN=1 the test binary is the loft command itself:
// `loft demo` run by a test starts it again as its children.
func TestMain(m *testing.M) {
	if os.Getenv("LOFT_CLI_TEST_MAIN") == "1" {
		os.Exit(cli.Main())
	}
	os.Exit(m.Run())
}

// runtimeDir is a fresh runtime directory; loft creates it with mode 0700.
func runtimeDir(t *testing.T) string {
	return filepath.Join(t.TempDir(), "rt")
}

type result struct {
	stdout, stderr string
	err            error
}

// loftCmd runs the loft command in process with the given runtime
// directory, arguments and standard input.
func loftCmd(ctx context.Context, dir string, stdin io.Reader, args ...string) result {
	cmd := cli.New()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	cmd.SetIn(stdin)
	cmd.SetArgs(append([]string{"--dir", dir}, args...))
	err := cmd.ExecuteContext(ctx)
	return result{out.String(), errOut.String(), err}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openNode(t *testing.T, dir string) *loft.Node {
	t.Helper()
	n, err := loft.Open(context.Background(), loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestLs(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	n := openNode(t, dir)
	if _, err := n.Receive(ctx, "jobs", loft.ChannelOptions{Capacity: 8}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Subscribe(ctx, "news", loft.ChannelOptions{}); err != nil {
		t.Fatal(err)
	}

	r := loftCmd(ctx, dir, nil, "ls")
	if r.err != nil {
		t.Fatalf("loft ls: %v\n%s", r.err, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 {
		t.Fatalf("loft ls printed %d lines, want a header and 3 rows:\n%s", len(lines), r.stdout)
	}
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "NAME KIND NODE PID ADDRESS" {
		t.Errorf("header %q", lines[0])
	}
	pid := strconv.Itoa(os.Getpid())
	for i, want := range [][]string{
		{"jobs", "channel", n.ID(), pid},
		{"news", "topic", n.ID(), pid},
		{n.ID(), "inbox", n.ID(), pid},
	} {
		f := strings.Fields(lines[i+1])
		if len(f) < 5 || strings.Join(f[:4], " ") != strings.Join(want, " ") {
			t.Errorf("row %d is %q, want it to start with %q and end with an address", i+1, lines[i+1], want)
		}
		if len(f) >= 5 && !strings.Contains(lines[i+1], "://") {
			t.Errorf("row %d has no address URL: %q", i+1, lines[i+1])
		}
	}

	r = loftCmd(ctx, dir, nil, "ls", "--json")
	if r.err != nil {
		t.Fatalf("loft ls --json: %v", r.err)
	}
	var rows []struct {
		Name, Kind, Node string
		PID              int
		Addrs            []string
		Meta             map[string]string
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("loft ls --json printed invalid JSON: %v\n%s", err, r.stdout)
	}
	if len(rows) != 3 || rows[0].Name != "jobs" || rows[0].Kind != "channel" || rows[0].Node != n.ID() ||
		rows[0].PID != os.Getpid() || len(rows[0].Addrs) == 0 || rows[0].Meta["capacity"] != "8" {
		t.Errorf("loft ls --json: %+v", rows)
	}
}

func TestLsEmpty(t *testing.T) {
	r := loftCmd(testContext(t), runtimeDir(t), nil, "ls")
	if r.err != nil || r.stdout != "" || !strings.Contains(r.stderr, "no live names") {
		t.Fatalf("loft ls with nothing running: err %v, stdout %q, stderr %q", r.err, r.stdout, r.stderr)
	}
	r = loftCmd(testContext(t), runtimeDir(t), nil, "ls", "--json")
	if r.err != nil || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("loft ls --json with nothing running: err %v, stdout %q", r.err, r.stdout)
	}
}

// recvAsync runs `loft recv` in the background.
func recvAsync(ctx context.Context, dir string, args ...string) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- loftCmd(ctx, dir, nil, append([]string{"recv"}, args...)...) }()
	return ch
}

func TestSendRecv(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	recv := recvAsync(ctx, dir, "--count", "2", "--timeout", "30s", "jobs")
	s := loftCmd(ctx, dir, nil, "send", "--timeout", "30s", "jobs", "hello", "big world")
	if s.err != nil {
		t.Fatalf("loft send: %v\n%s", s.err, s.stderr)
	}
	if !strings.Contains(s.stderr, `sent 2 message(s) to channel "jobs"`) {
		t.Errorf("loft send said %q", s.stderr)
	}
	r := <-recv
	if r.err != nil {
		t.Fatalf("loft recv: %v\n%s", r.err, r.stderr)
	}
	if r.stdout != "hello\nbig world\n" {
		t.Fatalf("loft recv printed %q", r.stdout)
	}
}

func TestSendStdin(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	recv := recvAsync(ctx, dir, "-n", "3", "--timeout", "30s", "lines")
	s := loftCmd(ctx, dir, strings.NewReader("one\ntwo two\nthree"), "send", "lines")
	if s.err != nil {
		t.Fatalf("loft send: %v\n%s", s.err, s.stderr)
	}
	if r := <-recv; r.err != nil || r.stdout != "one\ntwo two\nthree\n" {
		t.Fatalf("loft recv: err %v, printed %q", r.err, r.stdout)
	}
}

func TestSendRecvTopic(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	recv := recvAsync(ctx, dir, "--topic", "-n", "1", "--timeout", "30s", "news")
	s := loftCmd(ctx, dir, nil, "send", "--topic", "news", "it rains")
	if s.err != nil {
		t.Fatalf("loft send --topic: %v\n%s", s.err, s.stderr)
	}
	if r := <-recv; r.err != nil || r.stdout != "it rains\n" {
		t.Fatalf("loft recv --topic: err %v, printed %q", r.err, r.stdout)
	}
}

func TestSendTo(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	n := openNode(t, dir)
	s := loftCmd(ctx, dir, nil, "send", "--to", n.ID(), "psst")
	if s.err != nil {
		t.Fatalf("loft send --to: %v\n%s", s.err, s.stderr)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.Inbox().Recv(rctx)
	if err != nil || string(m.Data) != "psst" {
		t.Fatalf("inbox: %q, %v", m.Data, err)
	}
}

func TestSendNoReceiver(t *testing.T) {
	s := loftCmd(testContext(t), runtimeDir(t), nil, "send", "--timeout", "200ms", "nobody", "hi")
	if s.err == nil || !strings.Contains(s.err.Error(), "loft recv nobody") {
		t.Fatalf("loft send with no receiver: %v; want an error saying to start `loft recv nobody`", s.err)
	}
}

func TestSendUsage(t *testing.T) {
	s := loftCmd(testContext(t), runtimeDir(t), nil, "send")
	if s.err == nil || !strings.Contains(s.err.Error(), "NAME") {
		t.Fatalf("loft send with no arguments: %v", s.err)
	}
}

func TestRecvTimeout(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	r := loftCmd(ctx, dir, nil, "recv", "-n", "1", "--timeout", "100ms", "quiet")
	if r.err == nil || !strings.Contains(r.err.Error(), "received 0 of 1") {
		t.Fatalf("loft recv -n 1 with nothing sent: %v", r.err)
	}
	r = loftCmd(ctx, dir, nil, "recv", "--timeout", "100ms", "quiet")
	if r.err != nil {
		t.Fatalf("loft recv --timeout without --count should end quietly: %v", r.err)
	}
}

func TestWatch(t *testing.T) {
	ctx := testContext(t)
	dir := runtimeDir(t)
	n := openNode(t, dir)
	if _, err := n.Receive(ctx, "jobs", loft.ChannelOptions{}); err != nil {
		t.Fatal(err)
	}
	r := loftCmd(ctx, dir, nil, "watch", "--timeout", "500ms", "jobs")
	if r.err != nil {
		t.Fatalf("loft watch: %v", r.err)
	}
	f := strings.Fields(r.stdout)
	if len(f) < 4 || f[1] != "up" || f[2] != "jobs" || f[3] != n.ID() {
		t.Fatalf("loft watch printed %q, want a line \"TIME up jobs %s\"", r.stdout, n.ID())
	}
	if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
		t.Errorf("timestamp %q: %v", f[0], err)
	}
}

func TestBenchSizes(t *testing.T) {
	r := loftCmd(testContext(t), runtimeDir(t), nil, "bench", "--sizes", "64,4x")
	if r.err == nil || !strings.Contains(r.err.Error(), `"4x"`) {
		t.Fatalf("loft bench --sizes 64,4x: %v", r.err)
	}
}

func TestBenchJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("runs benchmarks")
	}
	r := loftCmd(testContext(t), runtimeDir(t), nil, "bench", "--quick", "--json", "--filter", "go-chan/inproc/oneway", "--sizes", "64")
	if r.err != nil {
		t.Fatalf("loft bench: %v\n%s", r.err, r.stderr)
	}
	var res struct {
		System string  `json:"system"`
		Size   int     `json:"size"`
		Rate   float64 `json:"msgs_per_s"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &res); err != nil || res.System != "go-chan" || res.Size != 64 || res.Rate <= 0 {
		t.Fatalf("loft bench --json printed %q (%v)", r.stdout, err)
	}
}

// TestDemo runs `loft demo` end to end: the test binary is started again
// as the children, through the hidden demo child command.
func TestDemo(t *testing.T) {
	t.Setenv("LOFT_CLI_TEST_MAIN", "1") // read by the children's TestMain
	r := loftCmd(testContext(t), runtimeDir(t), nil, "demo")
	t.Logf("loft demo:\n%s", r.stdout)
	if r.err != nil {
		t.Fatalf("loft demo: %v\n%s", r.err, r.stderr)
	}
	if n := strings.Count(r.stdout, "✓"); n != 8 {
		t.Fatalf("%d parts passed, want 8", n)
	}
}
