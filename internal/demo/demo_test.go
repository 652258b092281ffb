package demo_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loft-ipc/loft/internal/demo"
)

// childEnv makes the test binary act as a demo child: the demo starts it as
// `BINARY __demo-child ROLE ARGS...` with this variable set.
const childEnv = "LOFT_DEMO_TEST_CHILD=1"

func TestMain(m *testing.M) {
	if os.Getenv("LOFT_DEMO_TEST_CHILD") == "1" && len(os.Args) > 2 && os.Args[1] == demo.ChildCommand {
		if err := demo.RunChild(context.Background(), os.Args[2], os.Args[3:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "demo child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cfg := demo.Config{Executable: os.Args[0], Env: []string{childEnv}}
	err := cfg.Run(ctx, &out)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	report := out.String()
	if n := strings.Count(report, "✓"); n != 8 {
		t.Errorf("%d parts passed, want 8", n)
	}
	if strings.Contains(report, "✗") {
		t.Errorf("a part failed")
	}
	for _, want := range []string{
		"10000 messages", "in order",
		"300 jobs over 3 worker processes, each job to exactly one",
		"first round trip",
		"subscriber 1 got 100, subscriber 2 got 100",
		"Send returned ErrPeerGone",
		"200 sent, 200 received, 100 redelivered, 0 lost",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report does not say %q", want)
		}
	}
	checkCleanedUp(t, report)
}

// TestRunChildrenFail starts a program that is not a demo child: every part
// must fail quickly with an error, and nothing may be left behind.
func TestRunChildrenFail(t *testing.T) {
	f := filepath.Join(t.TempDir(), "not-a-child")
	if err := os.WriteFile(f, []byte("#!/bin/sh\necho 'I am not a demo child' >&2\nexit 7\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	err := demo.Config{Executable: f, PartTimeout: 30 * time.Second}.Run(ctx, &out)
	t.Logf("demo output:\n%s", out.String())
	if err == nil {
		t.Fatal("Run succeeded with children that cannot run")
	}
	if !strings.Contains(err.Error(), "8 of 8 parts failed") {
		t.Errorf("error %q, want it to say that all 8 parts failed", err)
	}
	if n := strings.Count(out.String(), "✗"); n != 8 {
		t.Errorf("%d parts marked failed, want 8", n)
	}
	if !strings.Contains(out.String(), "I am not a demo child") {
		t.Errorf("the report does not show the child's stderr")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("failing took %v: a dead child should fail its part at once, not at the part's timeout", d)
	}
	checkCleanedUp(t, out.String())
}

// TestRunCanceled checks that Run stops when its context ends.
func TestRunCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	err := demo.Config{Executable: os.Args[0], Env: []string{childEnv}}.Run(ctx, &out)
	if err == nil {
		t.Fatal("Run with a canceled context succeeded")
	}
	if kids := childrenOf(os.Getpid()); len(kids) > 0 {
		t.Errorf("child processes left running: %v", kids)
	}
}

// checkCleanedUp checks that the demo's runtime directory is gone and that
// this process has no child process left.
func checkCleanedUp(t *testing.T, report string) {
	t.Helper()
	_, rest, ok := strings.Cut(report, "runtime dir ")
	if !ok {
		t.Fatalf("the report does not name the runtime directory")
	}
	dir, _, _ := strings.Cut(rest, ")")
	if _, err := os.Stat(filepath.Dir(dir)); !os.IsNotExist(err) {
		t.Errorf("the demo's directory %s is still there (%v)", filepath.Dir(dir), err)
	}
	if kids := childrenOf(os.Getpid()); len(kids) > 0 {
		t.Errorf("child processes left running: %v", kids)
	}
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []string {
	ents, _ := os.ReadDir("/proc")
	var kids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so cut at the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, e.Name()+" "+s[:i+1])
		}
	}
	return kids
}

// TestRunChildStopsAtEOF runs a child role in this process: it must say
// ready, report messages, and return once its stdin closes.
func TestRunChildStopsAtEOF(t *testing.T) {
	t.Setenv("LOFT_RUNTIME_DIR", filepath.Join(t.TempDir(), "rt"))
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- demo.RunChild(context.Background(), "hold", []string{"name=x", "cap=4"}, inR, outW)
		outW.Close()
	}()
	sc := bufio.NewScanner(outR)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "ready ") {
		t.Fatalf("first line %q, want \"ready NODEID\"", sc.Text())
	}
	go io.Copy(io.Discard, outR)
	inW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunChild: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RunChild did not return after its stdin closed")
	}
}

func TestRunChildUnknownRole(t *testing.T) {
	t.Setenv("LOFT_RUNTIME_DIR", filepath.Join(t.TempDir(), "rt"))
	err := demo.RunChild(context.Background(), "juggle", nil, strings.NewReader(""), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "unknown role") {
		t.Fatalf("RunChild with an unknown role: %v", err)
	}
}
