package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func newWatchCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "watch NAME",
		Short: "Print when the holders of a name come up and go down",
		Long: `watch prints one line each time a process starts or stops holding NAME, with
the time loft noticed it, until interrupted (Ctrl-C) or until --timeout.
The holders present when watch starts are reported as "up" first.

NAME is a channel ("jobs"), a topic ("topic:news") or a node ("node:ID").
A process that dies, even by SIGKILL, is reported "down" within
milliseconds: loft notices its connection closing, it does not poll.

Examples:

  loft watch jobs                  receivers of the channel "jobs"
  loft watch topic:news            subscribers of the topic "news"
  loft watch --timeout 1m node:n4242-1a2b3c`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeoutContext(cmd.Context(), timeout)
			defer cancel()
			node, err := g.openNode(ctx)
			if err != nil {
				return err
			}
			defer node.Close()
			events, err := node.Watch(ctx, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for e := range events {
				line := fmt.Sprintf("%s  %-4s  %s  %s", e.At.Format("2006-01-02T15:04:05.000000Z07:00"), e.Kind, args[0], e.Node)
				if e.Err != nil {
					line += "  (" + e.Err.Error() + ")"
				}
				if _, err := fmt.Fprintln(out, line); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "stop after this long (0: until Ctrl-C)")
	return cmd
}
