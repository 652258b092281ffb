// Package cli is the loft command line: a cobra command tree with demo,
// send, recv, ls, watch and bench, built by [New] and run by [Main].
//
// Every command that talks to other processes opens its own short-lived
// loft node in the runtime directory (--dir, or the per-user default that
// honours LOFT_RUNTIME_DIR), so it sees the same names as the programs the
// user runs. Commands write their results to the command's standard output
// and their diagnostics to its standard error, so tests can run them in
// process with buffers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/names"
	"github.com/loft-ipc/loft/rpc/rpccli"
)

// globals are the flags shared by every command.
type globals struct {
	dir string
}

// New returns the root `loft` command with every subcommand. Each call
// builds a fresh tree, with no state shared between trees.
func New() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "loft",
		Short: "Inter-process communication for Go: channels, topics and inboxes between processes",
		Long: `loft lets processes on one host (and across hosts) exchange messages by name:
channels (each message to one receiver), topics (each message to every
subscriber) and inboxes (a message to one node). There is no daemon: names
live in a private per-user runtime directory and vanish when their owner dies.

This command shows loft at work and lets you poke at a running system:

  loft demo                 run a tour of every pattern between real processes
  loft recv jobs            receive from the channel "jobs" (in one terminal)
  loft send jobs hello      send "hello" to it (in another terminal)
  loft ls                   list the live names: channels, topics, nodes
  loft watch jobs           print when receivers of "jobs" come and go
  loft bench --quick        compare loft with pipes, Unix sockets and TCP`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.dir, "dir", "",
		"runtime directory of the name service (default $LOFT_RUNTIME_DIR, else $XDG_RUNTIME_DIR/loft, else $TMPDIR/loft-UID; now "+names.DefaultDir()+")")
	root.AddCommand(
		rpccli.CallCommand(g.openNode),
		newDemoCmd(),
		newDemoChildCmd(),
		newSendCmd(g),
		newRecvCmd(g),
		newLsCmd(g),
		newWatchCmd(g),
		newBenchCmd(),
	)
	return root
}

// Main runs the loft command with the process's arguments and returns the
// exit status: 0 on success, 1 on error, 130 if interrupted by Ctrl-C
// while failing. Ctrl-C and SIGTERM cancel the command's context.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := New()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "loft:", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	return 0
}

// openNode opens a node for one command in the chosen runtime directory.
func (g *globals) openNode(ctx context.Context) (*loft.Node, error) {
	n, err := loft.Open(ctx, loft.Options{Dir: g.dir})
	if err != nil {
		return nil, fmt.Errorf("opening a loft node in %s: %w", g.runtimeDir(), err)
	}
	return n, nil
}

// runtimeDir is the directory in use, for messages.
func (g *globals) runtimeDir() string {
	if g.dir != "" {
		return g.dir
	}
	return names.DefaultDir()
}

// interrupted reports whether the command was stopped from outside
// (Ctrl-C, SIGTERM), as opposed to a timeout of its own.
func interrupted(cmd *cobra.Command) bool {
	return cmd.Context().Err() != nil
}

// timeoutContext bounds ctx by d when d > 0.
func timeoutContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// isTimeout reports whether err is a deadline error.
func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
