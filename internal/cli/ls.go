package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft/names"
	"github.com/loft-ipc/loft/rpc/rpccli"
)

// lsRow is one holder of one name, as `loft ls` prints it.
type lsRow struct {
	Name  string            `json:"name"`
	Kind  string            `json:"kind"` // channel, topic, inbox, or the raw prefix
	Node  string            `json:"node"`
	PID   int               `json:"pid"`
	Host  string            `json:"host,omitempty"`
	Addrs []string          `json:"addrs"`
	Meta  map[string]string `json:"meta,omitempty"`
}

func newLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the live channels, topics and nodes",
		Long: `ls lists every name held by a live process in the runtime directory, one
line per holder:

  NAME     the channel or topic name, or the node id for an inbox
  KIND     channel, topic or inbox (every node has an inbox)
  NODE     the id of the node holding it (what loft send --to takes)
  PID      the process id of that node
  ADDRESS  where the node listens

A channel with several receivers shows one line per receiver. Names of
processes that died are never shown: they vanish with their owner.

Examples:

  loft ls
  loft ls --json | jq '.[] | select(.kind == "channel")'
  LOFT_RUNTIME_DIR=/tmp/rt loft ls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := names.Open(g.dir)
			if err != nil {
				return err
			}
			entries, err := reg.List()
			if err != nil {
				return err
			}
			rows := lsRows(entries)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no live names in %s (start a receiver with: loft recv jobs)\n", reg.Dir())
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tNODE\tPID\tADDRESS")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.Name, r.Kind, r.Node, r.PID, strings.Join(r.Addrs, " "))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			// RPC services: ask each one for its methods.
			if node, err := g.openNode(cmd.Context()); err == nil {
				ss := rpccli.Services(cmd.Context(), node, entries, 2*time.Second)
				node.Close()
				if len(ss) > 0 {
					fmt.Fprintln(out)
					rpccli.WriteServices(out, ss)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of objects instead of a table")
	return cmd
}

// kinds maps the registry prefixes loft uses to what ls shows, in the
// order ls lists them.
var kinds = []struct{ prefix, kind string }{
	{"chan:", "channel"},
	{"topic:", "topic"},
	{"inbox:", "inbox"},
}

// lsRows flattens registry entries into rows: channels first, then topics,
// then inboxes, each sorted by name and node.
func lsRows(entries []names.Entry) []lsRow {
	rows := []lsRow{}
	rank := map[string]int{}
	for _, e := range entries {
		name, kind := e.Name, "other"
		for i, k := range kinds {
			if n, ok := strings.CutPrefix(e.Name, k.prefix); ok {
				name, kind = n, k.kind
				rank[kind] = i
				break
			}
		}
		if kind == "other" {
			if p, n, ok := strings.Cut(e.Name, ":"); ok {
				name, kind = n, p
			}
			rank[kind] = len(kinds)
		}
		for _, h := range e.Holders {
			addrs := h.Node.Addrs
			if addrs == nil {
				addrs = []string{}
			}
			rows = append(rows, lsRow{Name: name, Kind: kind, Node: h.Node.ID, PID: h.Node.PID, Host: h.Node.Host, Addrs: addrs, Meta: h.Meta})
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if rank[a.Kind] != rank[b.Kind] {
			return rank[a.Kind] < rank[b.Kind]
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Node < b.Node
	})
	return rows
}
