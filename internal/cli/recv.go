package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft"
)

type recvFlags struct {
	count    int
	timeout  time.Duration
	capacity int
	topic    bool
}

func newRecvCmd(g *globals) *cobra.Command {
	var f recvFlags
	cmd := &cobra.Command{
		Use:   "recv NAME",
		Short: "Receive messages from a channel or a topic and print them",
		Long: `recv becomes a receiver of the channel NAME and prints every message it takes
as one line on standard output, until interrupted (Ctrl-C), until --count
messages were printed, or until --timeout passes.

Several receivers of one channel share its messages: each message goes to
one of them. A message recv has buffered but not printed when it stops is
not lost: the sender delivers it again to another receiver.

With --topic, NAME is a topic: recv subscribes and prints every message
published from then on.

Examples:

  loft recv jobs                    print messages of "jobs" until Ctrl-C
  loft recv --count 1 jobs          print one message and exit
  loft recv --timeout 5s jobs       print what arrives within 5 seconds
  loft recv --topic news            print everything published on "news"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecv(cmd, g, f, args[0])
		},
	}
	cmd.Flags().IntVarP(&f.count, "count", "n", 0, "exit after printing this many messages (0: no limit)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 0, "stop after this long; with --count it is an error to get fewer (0: no limit)")
	cmd.Flags().IntVar(&f.capacity, "capacity", 64, "messages buffered before senders wait (0: a sender waits until its message is printed)")
	cmd.Flags().BoolVar(&f.topic, "topic", false, "NAME is a topic: subscribe to it")
	return cmd
}

func runRecv(cmd *cobra.Command, g *globals, f recvFlags, name string) error {
	if f.count < 0 || f.capacity < 0 {
		return errors.New("--count and --capacity cannot be negative")
	}
	ctx, cancel := timeoutContext(cmd.Context(), f.timeout)
	defer cancel()
	node, err := g.openNode(ctx)
	if err != nil {
		return err
	}
	defer node.Close()
	opts := loft.ChannelOptions{Capacity: f.capacity}
	var r *loft.Receiver
	if f.topic {
		r, err = node.Subscribe(ctx, name, opts)
	} else {
		r, err = node.Receive(ctx, name, opts)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	got := 0
	out := cmd.OutOrStdout()
	for f.count == 0 || got < f.count {
		m, err := r.Recv(ctx)
		if err != nil {
			switch {
			case interrupted(cmd):
				return nil
			case isTimeout(err) && f.count > 0:
				return fmt.Errorf("received %d of %d messages within %v", got, f.count, f.timeout)
			case isTimeout(err):
				return nil
			}
			return err
		}
		got++
		line := append(m.Data, '\n')
		if _, err := out.Write(line); err != nil {
			return err
		}
	}
	return nil
}
