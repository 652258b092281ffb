// Package rpccli is the command-line side of loft RPC: the `loft call`
// command, which calls any registered procedure with JSON arguments and
// prints its JSON result, and the listing of services and methods that
// `loft ls` shows. The loft command (internal/cli) adds these to its tree;
// they take what they need from it as arguments.
package rpccli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/names"
	"github.com/loft-ipc/loft/rpc"
)

// CallCommand returns the `call` command. open opens the loft node the
// command calls from, in the runtime directory the user chose.
func CallCommand(open func(context.Context) (*loft.Node, error)) *cobra.Command {
	var timeout time.Duration
	var compact bool
	cmd := &cobra.Command{
		Use:   "call SERVICE.METHOD [JSON]",
		Short: "Call a procedure of an RPC service with JSON arguments",
		Long: `call calls METHOD of the RPC service SERVICE with the arguments given as
JSON (default {}; "-" reads them from standard input) and prints the result
as JSON. The server decodes the JSON into the argument type it registered,
whatever codec its Go clients use, and refuses unknown fields.

On failure call prints the error with its code (not found, invalid
argument, deadline exceeded, unavailable, ...) and exits with status 1.
loft ls lists the services, their methods and the JSON their arguments take.

Examples:

  loft call calc.Add '{"A": 1, "B": 2}'
  echo '{"Text": "hi"}' | loft call echo.Say -
  loft call --timeout 100ms slow.Work`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			i := strings.LastIndexByte(args[0], '.')
			if i <= 0 || i == len(args[0])-1 {
				return fmt.Errorf("%q: want SERVICE.METHOD, as in calc.Add (loft ls lists them)", args[0])
			}
			service, method := args[0][:i], args[0][i+1:]
			in := []byte("{}")
			if len(args) == 2 {
				in = []byte(args[1])
				if args[1] == "-" {
					var err error
					if in, err = io.ReadAll(cmd.InOrStdin()); err != nil {
						return err
					}
				}
			}
			if !json.Valid(in) {
				return fmt.Errorf("the arguments are not valid JSON: %s", bytes.TrimSpace(in))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			node, err := open(ctx)
			if err != nil {
				return err
			}
			defer node.Close()
			c, err := rpc.Dial(ctx, node, service, rpc.ClientOptions{})
			if err != nil {
				return err
			}
			defer c.Close()
			out, err := c.CallJSON(ctx, method, in)
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) && len(c.Servers()) == 0 {
					return fmt.Errorf("no server of %q answered within %v (is one running? loft ls lists services)", service, timeout)
				}
				return err
			}
			var buf bytes.Buffer
			if compact {
				err = json.Compact(&buf, out)
			} else {
				err = json.Indent(&buf, out, "", "  ")
			}
			if err != nil {
				buf.Reset()
				buf.Write(out)
			}
			buf.WriteByte('\n')
			_, err = cmd.OutOrStdout().Write(buf.Bytes())
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "deadline of the call (it travels to the server)")
	cmd.Flags().BoolVar(&compact, "compact", false, "print the result on one line")
	return cmd
}

// Service is one RPC service as `loft ls` shows it.
type Service struct {
	Service string           `json:"service"`
	Servers []string         `json:"servers"` // node ids
	Info    *rpc.ServiceInfo `json:"info,omitempty"`
	Err     string           `json:"error,omitempty"`
}

// Services finds the RPC services among the entries of the name service
// (names.Registry.List) and asks one server of each for its description,
// giving each at most timeout.
func Services(ctx context.Context, node *loft.Node, entries []names.Entry, timeout time.Duration) []Service {
	var out []Service
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name, "chan:rpc.")
		if !ok || strings.HasPrefix(name, "reply.") || strings.Contains(name, "@") || len(e.Holders) == 0 {
			continue
		}
		s := Service{Service: name}
		for _, h := range e.Holders {
			s.Servers = append(s.Servers, h.Node.ID)
		}
		sort.Strings(s.Servers)
		s.Info, s.Err = describe(ctx, node, name, timeout)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

func describe(ctx context.Context, node *loft.Node, service string, timeout time.Duration) (*rpc.ServiceInfo, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := rpc.Dial(ctx, node, service, rpc.ClientOptions{})
	if err != nil {
		return nil, err.Error()
	}
	defer c.Close()
	info, err := c.Describe(ctx)
	if err != nil {
		return nil, err.Error()
	}
	return &info, ""
}

// WriteServices prints services as a table, one line per method.
func WriteServices(w io.Writer, ss []Service) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tMETHOD\tARGUMENTS (JSON)\tRESULT (JSON)\tSERVERS")
	for _, s := range ss {
		servers := fmt.Sprint(len(s.Servers))
		switch {
		case s.Err != "":
			fmt.Fprintf(tw, "%s\t-\t(%s)\t\t%s\n", s.Service, s.Err, servers)
		case len(s.Info.Methods) == 0:
			fmt.Fprintf(tw, "%s\t-\t\t\t%s\n", s.Service, servers)
		default:
			for _, m := range s.Info.Methods {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Service, m.Name, m.Request.JSON, m.Response.JSON, servers)
			}
		}
	}
	return tw.Flush()
}

// LsCommand returns a `services` command listing the RPC services of the
// runtime directory dir (empty: the default) with their methods, for a
// command tree that wants them apart from `loft ls`.
func LsCommand(dir *string, open func(context.Context) (*loft.Node, error)) *cobra.Command {
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "services",
		Short: "List the RPC services, their methods and the JSON they take",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := names.Open(*dir)
			if err != nil {
				return err
			}
			entries, err := reg.List()
			if err != nil {
				return err
			}
			node, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer node.Close()
			ss := Services(cmd.Context(), node, entries, timeout)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if ss == nil {
					ss = []Service{}
				}
				return enc.Encode(ss)
			}
			if len(ss) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no RPC services running")
				return nil
			}
			return WriteServices(cmd.OutOrStdout(), ss)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for each service's description")
	return cmd
}
