package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"

	"github.com/loft-ipc/loft/wire"
)

// feed hands the frames in to a conn of n, as if a peer had sent them, and
// returns the first error.
func feed(n *Node, frames ...[]byte) error {
	a, b := net.Pipe()
	defer b.Close()
	c := newConn(n, a, false)
	c.remoteID = "feed"
	defer c.close(nil)
	rd := wire.NewReader(bytes.NewReader(bytes.Join(frames, nil)), 1<<16)
	for {
		fr, err := rd.Next()
		if err != nil {
			return nil
		}
		if err := c.handle(fr); err != nil {
			return err
		}
	}
}

// TestQueueRuns: the records of a DATA frame are queued as one run and
// taken one by one: runs of two senders and single messages interleave in
// arrival order, each sender's in its order, Stats counts messages, and a
// run that overruns the credit is refused whole.
func TestQueueRuns(t *testing.T) {
	n, err := Open(context.Background(), Options{Dir: filepath.Join(t.TempDir(), "rt")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	r, err := n.Receive(context.Background(), "runs", ChannelOptions{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	msgs := func(prefix string, k int) [][]byte {
		var out [][]byte
		for i := range k {
			out = append(out, fmt.Appendf(nil, "%s%d", prefix, i+1))
		}
		return out
	}
	err = feed(n,
		attachFrame(1, kindChannel, "runs"),
		attachFrame(2, kindChannel, "runs"),
		dataFrame(1, msgs("a", 3)...),
		dataFrame(2, msgs("b", 2)...),
		oneDataFrame(1, 1, 4, []byte("a4")), // a single record
		seqDataFrame(2, 3, []byte("b3"), []byte("b4")),
	)
	if err != nil {
		t.Fatal(err)
	}
	// The feeding conn is gone (its senders detached), but what it
	// delivered stays queued.
	if q := r.Stats().Queued; q != 8 {
		t.Fatalf("Queued = %d, want 8", q)
	}
	want := []struct {
		data string
		id   uint64
	}{{"a1", 1}, {"a2", 2}, {"a3", 3}, {"b1", 1}, {"b2", 2}, {"a4", 4}, {"b3", 3}, {"b4", 4}}
	for i, w := range want {
		m, err := r.TryRecv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(m.Data) != w.data || m.ID != w.id || m.From != "feed" {
			t.Fatalf("message %d: got %q id %d from %q, want %q id %d", i, m.Data, m.ID, m.From, w.data, w.id)
		}
		if q := r.Stats().Queued; q != len(want)-i-1 {
			t.Fatalf("after %d taken, Queued = %d", i+1, q)
		}
	}
	if _, err := r.TryRecv(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("queue not empty after the eight: %v", err)
	}
	// Nine records against a credit of eight: the frame is refused.
	err = feed(n, attachFrame(1, kindChannel, "runs"), dataFrame(1, msgs("x", 9)...))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("a run over the credit: got %v, want ErrProtocol", err)
	}
	if q := r.Stats().Queued; q != 0 {
		t.Fatalf("a refused run queued %d messages", q)
	}
}

// seqDataFrame is a sequential DATA frame (wire.FlagSeq) for att: the
// messages have ids first, first+1, ...
func seqDataFrame(att uint32, first uint64, msgs ...[]byte) []byte {
	p := binary.AppendUvarint(nil, uint64(att))
	p = binary.AppendUvarint(p, 1)
	p = binary.AppendUvarint(p, first)
	for _, m := range msgs {
		p = wire.AppendBytes(p, m)
	}
	return wire.AppendFrame(nil, wire.TData, wire.FlagSeq, p)
}

// TestSeqFramesExactlyOnce: sequential frames are de-duplicated message by
// message like the others.
func TestSeqFramesExactlyOnce(t *testing.T) {
	n, err := Open(context.Background(), Options{Dir: filepath.Join(t.TempDir(), "rt")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	r, err := n.Receive(context.Background(), "once", ChannelOptions{Capacity: 8, Delivery: ExactlyOnce})
	if err != nil {
		t.Fatal(err)
	}
	err = feed(n,
		attachFrame(1, kindChannel, "once"),
		seqDataFrame(1, 1, []byte("m1"), []byte("m2"), []byte("m3")),
		seqDataFrame(1, 2, []byte("m2"), []byte("m3"), []byte("m4")), // 2 and 3 again
	)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 4; i++ {
		m, err := r.TryRecv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.ID != i || string(m.Data) != fmt.Sprintf("m%d", i) {
			t.Fatalf("got %q id %d, want m%d", m.Data, m.ID, i)
		}
	}
	if _, err := r.TryRecv(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("a duplicate came through: %v", err)
	}
	if d := r.Stats().Duplicates; d != 2 {
		t.Fatalf("Duplicates = %d, want 2", d)
	}
}

// oneDataFrame is a DATA frame for att with floor and one message of the
// given id.
func oneDataFrame(att uint32, floor, id uint64, m []byte) []byte {
	p := binary.AppendUvarint(nil, uint64(att))
	p = binary.AppendUvarint(p, floor)
	p = binary.AppendUvarint(p, id)
	p = wire.AppendBytes(p, m)
	return wire.AppendFrame(nil, wire.TData, 0, p)
}
