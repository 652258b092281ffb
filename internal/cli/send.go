package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/loft-ipc/loft"
)

type sendFlags struct {
	timeout time.Duration
	topic   bool
	to      string
}

func newSendCmd(g *globals) *cobra.Command {
	var f sendFlags
	cmd := &cobra.Command{
		Use:   "send NAME [MESSAGE...]",
		Short: "Send messages to a channel, a topic or a node's inbox",
		Long: `send delivers each MESSAGE to the channel NAME: to one of its receivers,
whichever process that is. With no MESSAGE it reads standard input and sends
each line (without its newline) as one message.

send waits for a receiver to appear, and for room when the receivers are
full, up to --timeout per message; at the end it waits until a receiver
has taken every message, so nothing is lost when it exits.

With --topic, NAME is a topic and every subscriber gets every message.
With --to NODEID, the messages go to the inbox of that node (see loft ls)
and NAME is not given: every argument is a message.

Examples:

  loft send jobs hello world        two messages to the channel "jobs"
  seq 10 | loft send jobs           ten messages, one per line
  loft send --topic news "it rains" one message to every subscriber of "news"
  loft send --to n4242-1a2b3c ping  one message to the inbox of a node`,
		Args: func(cmd *cobra.Command, args []string) error {
			if f.to == "" && len(args) == 0 {
				return errors.New("send needs the NAME of a channel (or --topic NAME, or --to NODEID); see loft send --help")
			}
			if f.to != "" && f.topic {
				return errors.New("--to and --topic do not go together: a message goes to a node's inbox or to a topic")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSend(cmd, g, f, args)
		},
	}
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "give up when a message cannot be delivered for this long (no receiver, or all full); 0 waits forever")
	cmd.Flags().BoolVar(&f.topic, "topic", false, "NAME is a topic: publish to every subscriber")
	cmd.Flags().StringVar(&f.to, "to", "", "send to the inbox of node `NODEID` instead of a channel")
	return cmd
}

func runSend(cmd *cobra.Command, g *globals, f sendFlags, args []string) error {
	ctx := cmd.Context()
	stderr := &syncWriter{w: cmd.ErrOrStderr()}
	node, err := g.openNode(ctx)
	if err != nil {
		return err
	}
	defer node.Close()

	var (
		s     *loft.Sender
		what  string // for messages: `channel "jobs"`
		hint  string // what to do when nobody receives
		msgs  = args
		sendf func(context.Context, []byte) error
	)
	switch {
	case f.to != "":
		what = fmt.Sprintf("the inbox of node %q", f.to)
		hint = "check the node id with: loft ls"
		sendf = func(ctx context.Context, b []byte) error { return node.SendTo(ctx, f.to, b) }
	default:
		name := args[0]
		msgs = args[1:]
		if f.topic {
			what = fmt.Sprintf("topic %q", name)
			hint = "start a subscriber with: loft recv --topic " + name
			s, err = node.Publisher(ctx, name)
		} else {
			what = fmt.Sprintf("channel %q", name)
			hint = "start a receiver with: loft recv " + name
			s, err = node.Sender(ctx, name)
		}
		if err != nil {
			return err
		}
		defer s.Close()
		sendf = s.Send
	}

	// Tell a user staring at a silent terminal what send is waiting for.
	waiting := time.AfterFunc(time.Second, func() {
		if s == nil || s.Stats().Receivers == 0 {
			fmt.Fprintf(stderr, "loft send: waiting for a receiver of %s (%s)\n", what, hint)
		}
	})
	defer waiting.Stop()

	sent := 0
	sendOne := func(b []byte) error {
		sctx, cancel := timeoutContext(ctx, f.timeout)
		defer cancel()
		if err := sendf(sctx, b); err != nil {
			return describeSendErr(err, what, hint, f.timeout, sent)
		}
		sent++
		return nil
	}
	if len(msgs) > 0 {
		for _, m := range msgs {
			if err := sendOne([]byte(m)); err != nil {
				return err
			}
		}
	} else {
		if err := eachLine(cmd.InOrStdin(), sendOne); err != nil {
			return err
		}
	}
	waiting.Stop()
	if s != nil {
		fctx, cancel := timeoutContext(ctx, f.timeout)
		defer cancel()
		if err := s.Flush(fctx); err != nil {
			st := s.Stats()
			return fmt.Errorf("sent %d messages to %s, but %d were not taken by a receiver before giving up (%w); a receiver may have stopped early", sent, what, st.Pending, err)
		}
	}
	fmt.Fprintf(stderr, "sent %d message(s) to %s\n", sent, what)
	return nil
}

// eachLine calls fn on every line of r, without its line ending.
func eachLine(r io.Reader, fn func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), loft.DefaultMaxMessageSize)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading messages from standard input: %w", err)
	}
	return nil
}

// describeSendErr turns a send error into advice.
func describeSendErr(err error, what, hint string, timeout time.Duration, sent int) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("message %d to %s could not be delivered within %v: no receiver, or every receiver full (%s; or raise --timeout)", sent+1, what, timeout, hint)
	case errors.Is(err, loft.ErrPeerGone):
		return fmt.Errorf("after %d message(s), every receiver of %s went away: %w", sent, what, err)
	case errors.Is(err, loft.ErrTooLarge):
		return fmt.Errorf("message %d is larger than %s accepts: %w", sent+1, what, err)
	}
	return err
}

// syncWriter serializes writes from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
