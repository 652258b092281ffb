package demo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rmi/rmidemo"
	"github.com/loft-ipc/loft/rpc/rpcdemo"
)

// producerConsumer: a child sends 10,000 numbered messages on a channel;
// the parent receives them and checks count and order.
func (t *tour) producerConsumer(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	const n = 10000
	r, err := t.node.Receive(ctx, "demo.pc", loft.ChannelOptions{Capacity: 1024})
	if err != nil {
		return "", err
	}
	defer r.Close()
	p, err := t.spawn("producer", fail, "produce", "name=demo.pc", "n="+strconv.Itoa(n))
	if err != nil {
		return "", err
	}
	var first time.Time
	var lastID uint64
	for i := range n {
		m, err := r.Recv(ctx)
		if err != nil {
			return "", fmt.Errorf("after %d of %d messages: %w", i, n, causeOr(ctx, err))
		}
		if i == 0 {
			first = time.Now()
		}
		if got := string(m.Data); got != strconv.Itoa(i) {
			return "", fmt.Errorf("message %d is %q: out of order or lost", i, got)
		}
		if i > 0 && m.ID <= lastID {
			return "", fmt.Errorf("message %d has id %d after id %d: out of order", i, m.ID, lastID)
		}
		lastID = m.ID
	}
	elapsed := time.Since(first)
	if _, err := p.expect(ctx, "sent"); err != nil {
		return "", err
	}
	if m, err := r.TryRecv(); err == nil {
		return "", fmt.Errorf("an extra message %q arrived after the %d expected", m.Data, n)
	}
	return fmt.Sprintf("%d messages, producer process → parent, all in order, %s (%s)",
		n, fmtDur(elapsed), fmtRate(n-1, elapsed)), nil
}

// workerPool: three worker processes compete for jobs on one channel; each
// job must reach exactly one of them.
func (t *tour) workerPool(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	const jobs, nworkers = 300, 3
	s, err := t.node.Sender(ctx, "demo.jobs")
	if err != nil {
		return "", err
	}
	defer s.Close()
	ws, err := t.spawnReady(ctx, fail, "worker", nworkers, "recv", "name=demo.jobs", "cap=16")
	if err != nil {
		return "", err
	}
	if err := waitReceivers(ctx, s, nworkers); err != nil {
		return "", err
	}
	start := time.Now()
	for i := range jobs {
		if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			return "", causeOr(ctx, err)
		}
	}
	seen := make([]int, jobs) // which worker (1-based) took job i
	split := make([]int, nworkers)
	distinct := 0
	var bad error
	err = gather(ctx, ws, func(w int, data string) bool {
		j, err := strconv.Atoi(data)
		if err != nil || j < 0 || j >= jobs {
			bad = fmt.Errorf("worker %d got a job %q that was never sent", w+1, data)
			return true
		}
		if seen[j] != 0 {
			bad = fmt.Errorf("job %d went to worker %d and again to worker %d", j, seen[j], w+1)
			return true
		}
		seen[j] = w + 1
		split[w]++
		distinct++
		return distinct == jobs
	})
	if err != nil {
		return "", fmt.Errorf("%d of %d jobs done: %w", distinct, jobs, err)
	}
	if bad != nil {
		return "", bad
	}
	elapsed := time.Since(start)
	if err := s.Flush(ctx); err != nil {
		return "", causeOr(ctx, err)
	}
	parts := make([]string, nworkers)
	for i, k := range split {
		if k == 0 {
			return "", fmt.Errorf("worker %d got no job: the split is %v", i+1, split)
		}
		parts[i] = strconv.Itoa(k)
	}
	return fmt.Sprintf("%d jobs over %d worker processes, each job to exactly one: %s, %s",
		jobs, nworkers, strings.Join(parts, " / "), fmtDur(elapsed)), nil
}

// direct: the parent sends to a child's inbox by node id, and the child
// answers to the parent's inbox.
func (t *tour) direct(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	const rounds = 100
	es, err := t.spawnReady(ctx, fail, "echo child", 1, "echo")
	if err != nil {
		return "", err
	}
	e := es[0]
	inbox := t.node.Inbox()
	exchange := func(i int) error {
		ping := "ping " + strconv.Itoa(i)
		if err := t.node.SendTo(ctx, e.id, []byte(ping)); err != nil {
			return causeOr(ctx, err)
		}
		m, err := inbox.Recv(ctx)
		if err != nil {
			return causeOr(ctx, err)
		}
		if want := "pong: " + ping; string(m.Data) != want || m.From != e.id {
			return fmt.Errorf("the parent's inbox got %q from %s, want %q from %s", m.Data, m.From, want, e.id)
		}
		return nil
	}
	start := time.Now()
	if err := exchange(0); err != nil {
		return "", err
	}
	first := time.Since(start)
	start = time.Now()
	for i := 1; i <= rounds; i++ {
		if err := exchange(i); err != nil {
			return "", err
		}
	}
	avg := time.Since(start) / rounds
	return fmt.Sprintf("parent → inbox of node %s → parent's inbox: first round trip %s (connecting included), next %d %s each",
		e.id, fmtDur(first), rounds, fmtDur(avg)), nil
}

// pubSub: two subscriber processes each get every message published.
func (t *tour) pubSub(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	const msgs, nsubs = 100, 2
	pub, err := t.node.Publisher(ctx, "demo.news")
	if err != nil {
		return "", err
	}
	defer pub.Close()
	subs, err := t.spawnReady(ctx, fail, "subscriber", nsubs, "subscribe", "name=demo.news", "cap=128")
	if err != nil {
		return "", err
	}
	if err := waitReceivers(ctx, pub, nsubs); err != nil {
		return "", err
	}
	for i := range msgs {
		if err := pub.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			return "", causeOr(ctx, err)
		}
	}
	got := make([]int, nsubs)
	complete := 0
	var bad error
	err = gather(ctx, subs, func(s int, data string) bool {
		if data != strconv.Itoa(got[s]) {
			bad = fmt.Errorf("subscriber %d got %q as message %d: lost or out of order", s+1, data, got[s])
			return true
		}
		got[s]++
		if got[s] == msgs {
			complete++
		}
		return complete == nsubs
	})
	if err != nil {
		return "", fmt.Errorf("subscribers got %v of %d: %w", got, msgs, err)
	}
	if bad != nil {
		return "", bad
	}
	var each []string
	for i, g := range got {
		each = append(each, fmt.Sprintf("subscriber %d got %d", i+1, g))
	}
	return fmt.Sprintf("%d published on topic \"demo.news\": %s, in order",
		msgs, strings.Join(each, ", ")), nil
}

// death: a receiver is killed with SIGKILL; the parent's Send must fail
// with ErrPeerGone, and Watch must report the receiver down, quickly.
func (t *tour) death(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	events, err := t.node.Watch(wctx, "demo.death")
	if err != nil {
		return "", err
	}
	s, err := t.node.Sender(ctx, "demo.death")
	if err != nil {
		return "", err
	}
	defer s.Close()
	vs, err := t.spawnReady(ctx, fail, "receiver", 1, "recv", "name=demo.death", "cap=8")
	if err != nil {
		return "", err
	}
	v := vs[0]
	if err := waitReceivers(ctx, s, 1); err != nil {
		return "", err
	}
	if err := s.Send(ctx, []byte("alive?")); err != nil {
		return "", causeOr(ctx, err)
	}
	if _, err := v.expect(ctx, "got"); err != nil {
		return "", err
	}
	if _, err := nextEvent(ctx, events, loft.Up, v.id); err != nil {
		return "", err
	}

	killed := v.kill()
	sends := 0
	for {
		err = s.Send(ctx, []byte("are you there?"))
		if err != nil {
			break
		}
		sends++
	}
	sendErr := time.Since(killed)
	if !errors.Is(err, loft.ErrPeerGone) {
		return "", fmt.Errorf("after SIGKILL, Send returned %v; want an error wrapping loft.ErrPeerGone", causeOr(ctx, err))
	}
	ev, err := nextEvent(ctx, events, loft.Down, v.id)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("receiver process SIGKILLed: Send returned ErrPeerGone %s later (%d sends buffered before), Watch reported it down after %s",
		fmtDur(sendErr), sends, fmtDur(ev.At.Sub(killed))), nil
}

// nextEvent waits for a watch event of kind about node.
func nextEvent(ctx context.Context, events <-chan loft.Event, kind loft.EventKind, node string) (loft.Event, error) {
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return loft.Event{}, fmt.Errorf("the watch ended before reporting %s %s: %w", node, kind, context.Cause(ctx))
			}
			if e.Kind == kind && e.Node == node {
				return e, nil
			}
		case <-ctx.Done():
			return loft.Event{}, fmt.Errorf("waiting for Watch to report %s %s: %w", node, kind, context.Cause(ctx))
		}
	}
}

// atLeastOnce: a receiver that never takes its messages dies holding 100
// of them; the sender delivers them again to a second receiver.
func (t *tour) atLeastOnce(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	const held, rest = 100, 100
	const total = held + rest
	s, err := t.node.Sender(ctx, "demo.redeliver")
	if err != nil {
		return "", err
	}
	defer s.Close()
	hs, err := t.spawnReady(ctx, fail, "holder", 1, "hold", "name=demo.redeliver", "cap=100")
	if err != nil {
		return "", err
	}
	if err := waitReceivers(ctx, s, 1); err != nil {
		return "", err
	}
	for i := range held {
		if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			return "", causeOr(ctx, err)
		}
	}
	if st := s.Stats(); st.Pending != held {
		return "", fmt.Errorf("the holder should hold %d unacknowledged messages; the sender counts %d pending", held, st.Pending)
	}
	bs, err := t.spawnReady(ctx, fail, "receiver", 1, "recv", "name=demo.redeliver", "cap=100")
	if err != nil {
		return "", err
	}
	if err := waitReceivers(ctx, s, 2); err != nil {
		return "", err
	}
	hs[0].kill()
	// Wait for the sender to see the death, so that the rest cannot go to
	// the dead holder; they would be redelivered too, but the count would
	// then vary from run to run.
	if err := waitFor(ctx, "the sender to notice the holder's death", func() bool { return s.Stats().Receivers == 1 }); err != nil {
		return "", err
	}
	for i := held; i < total; i++ {
		if err := s.Send(ctx, []byte(strconv.Itoa(i))); err != nil {
			return "", causeOr(ctx, err)
		}
	}
	seen := make([]bool, total)
	received, dups := 0, 0
	var bad error
	err = gather(ctx, bs, func(_ int, data string) bool {
		j, err := strconv.Atoi(data)
		if err != nil || j < 0 || j >= total {
			bad = fmt.Errorf("the receiver got %q, which was never sent", data)
			return true
		}
		if seen[j] {
			dups++
			return false
		}
		seen[j] = true
		received++
		return received == total
	})
	if err != nil {
		return "", fmt.Errorf("%d of %d received: %w", received, total, err)
	}
	if bad != nil {
		return "", bad
	}
	if err := s.Flush(ctx); err != nil {
		return "", causeOr(ctx, err)
	}
	st := s.Stats()
	if st.Lost != 0 || st.Redelivered < held {
		return "", fmt.Errorf("sender counts %d redelivered and %d lost; want at least %d and 0", st.Redelivered, st.Lost, held)
	}
	summary := fmt.Sprintf("%d sent, %d received, %d redelivered, %d lost (a receiver holding %d unacknowledged was SIGKILLed)",
		st.Sent, received, st.Redelivered, st.Lost, held)
	if dups > 0 {
		summary += fmt.Sprintf(", %d duplicates", dups)
	}
	return summary, nil
}

// causeOr returns why ctx ended if it did, else err: "a child died" says
// more than "context canceled".
func causeOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		if c := context.Cause(ctx); c != nil {
			return c
		}
	}
	return err
}

// rpc: typed calls to a service in another process, found by name.
func (t *tour) rpc(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	if _, err := t.spawnReady(ctx, fail, "rpc server", 1, "rpc"); err != nil {
		return "", err
	}
	return rpcdemo.Exercise(ctx, t.node)
}

// rmi: a callback and a pipelined chain with remote objects in another process.
func (t *tour) rmi(ctx context.Context, fail context.CancelCauseFunc) (string, error) {
	cs, err := t.spawnReady(ctx, fail, "rmi server", 1, "rmi")
	if err != nil {
		return "", err
	}
	return rmidemo.Exercise(ctx, t.node, cs[0].id)
}
