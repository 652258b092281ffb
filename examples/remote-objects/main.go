// Command remote-objects shows loft's remote objects between two processes:
// a progress listener passed to a long job and called back while the job
// runs, a pipelined chain of calls that costs about one round trip, and the
// listener passed again, this time in the request of an ordinary rpc call.
//
// Run it with: go run ./examples/remote-objects
// It starts itself a second time as the server process.
package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rmi"
	"github.com/loft-ipc/loft/rpc"
)

// The remote interfaces are ordinary Go interfaces; go generate writes
// their typed proxies (and registers them) in main_rmi.go.
//
//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type Listener,Jobs,Dir,File

// Listener hears about a job's progress. It lives in the client; the server
// gets a delegate and its calls come back to the client.
type Listener interface {
	Progress(ctx context.Context, done, total int) error
}

// Jobs runs long jobs.
type Jobs interface {
	Run(ctx context.Context, steps int, l Listener) (int, error)
}

// Dir opens files; File reads them. Both live in the server.
type Dir interface {
	Open(ctx context.Context, name string) (File, error)
}

// File is an open file.
type File interface {
	Read(ctx context.Context) (string, error)
}

// Server-side implementations: ordinary Go.
type jobs struct{}

func (jobs) Run(ctx context.Context, steps int, l Listener) (int, error) {
	for i := 1; i <= steps; i++ {
		time.Sleep(10 * time.Millisecond) // the work
		if err := l.Progress(ctx, i, steps); err != nil {
			return i - 1, err
		}
	}
	return steps, nil
}

type dir struct{}

func (dir) Open(ctx context.Context, name string) (File, error) {
	if name == "" {
		return nil, fmt.Errorf("open: empty name")
	}
	return file{name}, nil
}

type file struct{ name string }

func (f file) Read(ctx context.Context) (string, error) { return "contents of " + f.name, nil }

// RunRequest is the request of the rpc procedure "jobs.Run": the listener
// travels in it as an rmi.Ref.
type RunRequest struct {
	Steps    int
	Progress rmi.Ref
}

// serveRPC serves "jobs.Run" over rpc: the same job, its listener imported
// from the request.
func serveRPC(ctx context.Context, node *loft.Node, ep *rmi.Endpoint) (*rpc.Server, error) {
	srv, err := rpc.NewServer(node, "jobs", rpc.ServerOptions{})
	if err != nil {
		return nil, err
	}
	err = rpc.Register(srv, "Run", func(ctx context.Context, req RunRequest) (int, error) {
		l, err := rmi.ImportRef[Listener](ep, req.Progress)
		if err != nil {
			return 0, err
		}
		defer rmi.Release(l)
		return jobs{}.Run(ctx, req.Steps, l)
	})
	if err != nil {
		return nil, err
	}
	return srv, srv.Start(ctx)
}

// Client-side listener.
type printer struct{}

func (printer) Progress(ctx context.Context, done, total int) error {
	fmt.Printf("  progress %d/%d (called back from the server process)\n", done, total)
	return nil
}

func main() {
	log.SetFlags(0)
	ctx := context.Background()
	if len(os.Args) > 1 && os.Args[1] == "server" {
		if err := server(ctx); err != nil {
			log.Fatal("server: ", err)
		}
		return
	}
	if err := client(ctx); err != nil {
		log.Fatal(err)
	}
}

func server(ctx context.Context) error {
	node, err := loft.Open(ctx, loft.Options{})
	if err != nil {
		return err
	}
	defer node.Close()
	ep, err := rmi.Open(ctx, node, rmi.Options{})
	if err != nil {
		return err
	}
	defer ep.Close()
	if err := rmi.Publish[Jobs](ep, "jobs", jobs{}); err != nil {
		return err
	}
	if err := rmi.Publish[Dir](ep, "files", dir{}); err != nil {
		return err
	}
	srv, err := serveRPC(ctx, node, ep)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Println("ready", node.ID())
	bufio.NewReader(os.Stdin).ReadString('\n') // until the client is done
	return nil
}

func client(ctx context.Context) error {
	// A private runtime directory shared with the server we start.
	tmp, err := os.MkdirTemp("", "loft-rmi-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dirPath := filepath.Join(tmp, "rt")
	os.Setenv("LOFT_RUNTIME_DIR", dirPath)

	self, _ := os.Executable()
	cmd := exec.Command(self, "server")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server did not start: %w", err)
	}
	serverID := strings.TrimSpace(strings.TrimPrefix(line, "ready "))

	node, err := loft.Open(ctx, loft.Options{})
	if err != nil {
		return err
	}
	defer node.Close()
	ep, err := rmi.Open(ctx, node, rmi.Options{})
	if err != nil {
		return err
	}
	defer ep.Close()

	// 1. A callback: the listener stays here; the server calls it.
	js, err := rmi.Lookup[Jobs](ctx, ep, serverID, "jobs")
	if err != nil {
		return err
	}
	fmt.Println("running a 5-step job in the server process:")
	n, err := js.Run(ctx, 5, printer{})
	if err != nil {
		return err
	}
	fmt.Printf("job done: %d steps\n", n)

	// 2. Pipelining: Open returns at once a delegate for a result that
	// does not exist yet; Read on it is sent right behind Open.
	files, err := rmi.Lookup[Dir](ctx, ep, serverID, "files")
	if err != nil {
		return err
	}
	start := time.Now()
	f, _ := files.Open(rmi.Pipeline(ctx), "readme")
	text, err := f.Read(ctx)
	if err != nil {
		return err
	}
	rmi.Release(f)
	fmt.Printf("pipelined Open(\"readme\").Read() = %q in %v (one round trip)\n", text, time.Since(start).Round(time.Microsecond))

	// An error early in a chain reaches the calls after it.
	bad, _ := files.Open(rmi.Pipeline(ctx), "")
	if _, err := bad.Read(ctx); err != nil {
		fmt.Println("pipelined Open(\"\").Read() failed as it should:", err)
	}
	rmi.Release(bad)

	// 3. The same listener in the request of an rpc call: an rmi.Ref made
	// for the server's node, which the handler turns back into a delegate.
	cli, err := rpc.Dial(ctx, node, "jobs", rpc.ClientOptions{})
	if err != nil {
		return err
	}
	defer cli.Close()
	ref, err := rmi.ExportRef[Listener](ep, serverID, printer{})
	if err != nil {
		return err
	}
	fmt.Println("the same job through rpc, the listener passed in the request:")
	n, err = rpc.Call[RunRequest, int](ctx, cli, "Run", RunRequest{Steps: 2, Progress: ref})
	if err != nil {
		return err
	}
	fmt.Printf("rpc job done: %d steps\n", n)
	return nil
}
