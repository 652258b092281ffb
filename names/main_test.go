package names

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Child roles: the test binary re-executes itself with childEnv set.
const (
	childEnv   = "LOFT_NAMES_TEST_CHILD"
	childDir   = "LOFT_NAMES_TEST_DIR"
	childID    = "LOFT_NAMES_TEST_ID"
	childNames = "LOFT_NAMES_TEST_NAMES" // comma-separated
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}

// runChild registers a node, binds names, prints "ready" and waits for
// stdin to close; the parent normally kills it first.
func runChild(role string) int {
	if role != "bind" {
		fmt.Fprintln(os.Stderr, "unknown child role", role)
		return 2
	}
	reg, err := Open(os.Getenv(childDir))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lease, err := reg.Register(NodeInfo{ID: os.Getenv(childID), Addrs: []string{"unix:///nowhere/" + os.Getenv(childID)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, n := range strings.Split(os.Getenv(childNames), ",") {
		if n == "" {
			continue
		}
		if err := lease.Bind(n, map[string]string{"kind": "channel", "pid": fmt.Sprint(os.Getpid())}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Println("ready")
	buf := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			break
		}
	}
	if err := lease.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// child is a running child process.
type child struct {
	id  string
	cmd *exec.Cmd
}

// startChild starts a child that registers id and binds names in dir, and
// waits until it printed "ready". The child is killed at cleanup.
func startChild(t *testing.T, dir, id string, names ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=bind", childDir+"="+dir, childID+"="+id,
		childNames+"="+strings.Join(names, ","))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{id: id, cmd: cmd}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "ready\n" {
			t.Fatalf("child %s: got %q, want ready", id, s)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("child %s: not ready after 20s", id)
	}
	return c
}

// kill sends SIGKILL to the child and reaps it.
func (c *child) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait() // "signal: killed"
}

// newDir returns a fresh registry directory inside t.TempDir() (which
// itself has mode 0755 under the usual umask, so Open would refuse it).
func newDir(t *testing.T) string {
	t.Helper()
	return t.TempDir() + "/loft"
}

func openReg(t *testing.T) *Registry {
	t.Helper()
	r, err := Open(newDir(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}
