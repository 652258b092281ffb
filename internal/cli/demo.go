package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var cfg demo.Config
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a tour of every loft pattern between real processes",
		Long: `demo starts this program again as several child processes and runs every
message-passing pattern of loft between them, checking each and printing one
line per part:

  producer-consumer  a child sends 10,000 messages to the parent, in order
  worker pool        3 worker processes share 300 jobs, each job to exactly one
  direct message     the parent writes to a child's inbox, the child answers
  pub/sub            2 subscriber processes each get all 100 messages of a topic
  death              a receiver is killed with SIGKILL; Send returns ErrPeerGone
  at-least-once      a receiver dies holding 100 messages; another gets them all

The demo uses a fresh private runtime directory (removed afterwards), so it
never touches your own names, and it never leaves a child process behind.
It exits with status 0 when every part passed.

Example:

  loft demo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			err := cfg.Run(cmd.Context(), cmd.OutOrStdout())
			if err != nil && interrupted(cmd) {
				return errors.New("demo interrupted")
			}
			return err
		},
	}
	cmd.Flags().DurationVar(&cfg.PartTimeout, "part-timeout", 0, "give up on a part after this long (default 20s)")
	return cmd
}

// newDemoChildCmd is the hidden command a demo child process runs.
func newDemoChildCmd() *cobra.Command {
	return &cobra.Command{
		Use:                demo.ChildCommand + " ROLE [ARGS...]",
		Short:              "Internal: one child process of `loft demo`",
		Hidden:             true,
		DisableFlagParsing: true,
		Args:               cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return demo.RunChild(cmd.Context(), args[0], args[1:], cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}
