package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/loft-ipc/loft/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		opts       bench.Options
		asJSON     bool
		asMarkdown bool
		from       string
		sizes      string
		results    []bench.Result
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure loft against pipes, Unix sockets, TCP and Go channels",
		Long: `bench runs loft and the raw alternatives side by side on this host, each side
of a case in its own process, and prints a table of the medians over the
rounds (messages per second, MB/s, round-trip latency, and how loft compares
with the raw transport). Rounds are interleaved because machines are noisy,
and the first case runs once unreported before them (a fresh process is slow
at first).

A progress bar goes to standard error when it is a terminal; the table goes
to standard output, or with --json one JSON object per case and round, or
with --markdown a Markdown table where every row is compared with its
baseline of the same run (raw transport, gRPC-go and net/rpc, one plain
remote call). --from renders JSON lines saved earlier without running.
The JSON of loft's one-way cases also has each side's CPU time and heap
allocations per message (send_cpu_ns_per_msg, recv_cpu_ns_per_msg,
send_allocs_per_msg, recv_allocs_per_msg).

Cases are named system/transport/pattern/size; --filter picks some by a
regular expression (or a plain substring).

Examples:

  loft bench --quick                    one short round of everything (about a minute)
  loft bench --filter 'unix/oneway' --sizes 64,4k
  loft bench --json --rounds 5 > results.jsonl
  loft bench --from results.jsonl --markdown`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sizes != "" {
				s, err := parseSizes(sizes)
				if err != nil {
					return err
				}
				opts.Sizes = s
			}
			if from != "" {
				f, err := os.Open(from)
				if err != nil {
					return err
				}
				defer f.Close()
				res, err := bench.ReadJSON(f)
				if err != nil {
					return err
				}
				if asMarkdown {
					return bench.WriteMarkdown(cmd.OutOrStdout(), res)
				}
				return bench.WriteTable(cmd.OutOrStdout(), res)
			}
			switch {
			case asJSON:
				opts.JSON = cmd.OutOrStdout()
			case asMarkdown:
				defer func() {
					// Printed after the run, whatever its outcome.
					bench.WriteMarkdown(cmd.OutOrStdout(), results)
				}()
			default:
				opts.Table = cmd.OutOrStdout()
			}
			if f, ok := cmd.ErrOrStderr().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				opts.Progress = f
			}
			var err error
			results, err = bench.Run(cmd.Context(), opts)
			return err
		},
	}
	cmd.Flags().BoolVar(&opts.Quick, "quick", false, "one round with short budgets (about 300 ms per case)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines (one per case and round) instead of a table")
	cmd.Flags().BoolVar(&asMarkdown, "markdown", false, "print a Markdown table with each row compared to its baseline (raw transport, gRPC, one call)")
	cmd.Flags().StringVar(&from, "from", "", "do not run: print the table (or --markdown) of JSON lines saved from an earlier --json run")
	cmd.Flags().IntVar(&opts.Rounds, "rounds", 0, "rounds to run (default 3, or 1 with --quick)")
	cmd.Flags().StringVar(&opts.Filter, "filter", "", "run only cases whose system/transport/pattern/size matches this regular expression")
	cmd.Flags().StringVar(&sizes, "sizes", "", "payload sizes in bytes, comma separated, with optional k or M suffix (default 64,4k,1M)")
	return cmd
}

// parseSizes parses "64,4k,1M" into byte counts (k = 1024, M = 1024*1024).
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "k"), strings.HasSuffix(f, "K"):
			mult, f = 1<<10, f[:len(f)-1]
		case strings.HasSuffix(f, "M"), strings.HasSuffix(f, "m"):
			mult, f = 1<<20, f[:len(f)-1]
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--sizes %q: %q is not a positive size (examples: 64, 4k, 1M)", s, f)
		}
		out = append(out, n*mult)
	}
	return out, nil
}
