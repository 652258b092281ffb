package rpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	var e envelope
	b := appendCall(nil, codecCBOR, 300, "rpc.reply.n1.abc", "Add", 1234567890123)
	b = append(b, 0xa0)
	if err := parseEnvelope(b, &e); err != nil {
		t.Fatal(err)
	}
	if e.kind != kindCall || e.id != 300 || string(e.replyTo) != "rpc.reply.n1.abc" || string(e.method) != "Add" ||
		e.flags != flagDeadline || e.deadline != 1234567890123 || e.codec != codecCBOR || !bytes.Equal(e.payload, []byte{0xa0}) {
		t.Fatalf("call: %+v", e)
	}
	b = appendCall(nil, codecJSON, 1, "r", "M", 0)
	if err := parseEnvelope(b, &e); err != nil || e.flags != 0 || len(e.payload) != 0 {
		t.Fatalf("call without deadline: %+v %v", e, err)
	}
	b = appendReply(nil, codecCBOR, 1<<40, NotFound, "nope")
	b = append(b, 1, 2, 3)
	if err := parseEnvelope(b, &e); err != nil || e.kind != kindReply || e.id != 1<<40 || Code(e.code) != NotFound || string(e.msg) != "nope" || len(e.payload) != 3 {
		t.Fatalf("reply: %+v %v", e, err)
	}
	long := string(bytes.Repeat([]byte("m"), 3*maxMessageLen))
	if err := parseEnvelope(appendReply(nil, 0, 1, Internal, long), &e); err != nil || len(e.msg) != maxMessageLen {
		t.Fatalf("long message: %d bytes, %v", len(e.msg), err)
	}
	b = appendCancel(nil, 99, "somewhere")
	if err := parseEnvelope(b, &e); err != nil || e.kind != kindCancel || e.id != 99 || string(e.replyTo) != "somewhere" {
		t.Fatalf("cancel: %+v %v", e, err)
	}
	b = appendBatchHeader(nil, 2)
	for _, id := range []uint64{5, 6} {
		one := appendCall(nil, codecCBOR, id, "r", "M", 0)
		b = binary.AppendUvarint(b, uint64(len(one)))
		b = append(b, one...)
	}
	if err := parseEnvelope(b, &e); err != nil || e.kind != kindBatch || e.id != 2 {
		t.Fatalf("batch: %+v %v", e, err)
	}
	var ids []uint64
	err := forEachInBatch(e.id, e.payload, func(x []byte) error {
		var in envelope
		if err := parseEnvelope(x, &in); err != nil {
			return err
		}
		ids = append(ids, in.id)
		return nil
	})
	if err != nil || len(ids) != 2 || ids[0] != 5 || ids[1] != 6 {
		t.Fatalf("batch entries %v, %v", ids, err)
	}
}

// Every strict prefix of a valid envelope is refused, or parses (if the
// cut fell in the payload), without a panic.
func TestEnvelopePrefixes(t *testing.T) {
	msgs := [][]byte{
		append(appendCall(nil, codecCBOR, 1<<50, "rpc.reply.x", "Method", 42), 1, 2, 3),
		appendReply(nil, codecCBOR, 12345, Unavailable, "gone"),
		appendCancel(nil, 7, "r"),
	}
	for _, m := range msgs {
		var full envelope
		if err := parseEnvelope(m, &full); err != nil {
			t.Fatal(err)
		}
		hdr := len(m) - len(full.payload)
		for i := range len(m) {
			var e envelope
			err := parseEnvelope(m[:i], &e)
			if i < hdr && err == nil && full.kind != kindCancel {
				t.Errorf("prefix %d of % x parsed", i, m)
			}
			if err != nil && !errors.Is(err, ErrBadEnvelope) {
				t.Errorf("error %v does not wrap ErrBadEnvelope", err)
			}
		}
	}
}

func TestEnvelopeRefusals(t *testing.T) {
	cases := map[string][]byte{
		"empty":            {},
		"version":          {2, kindCall, 0, 1},
		"kind":             {1, 0, 0, 0},
		"call flags":       {1, kindCall, 0x02, 1, 1, 1, 'r', 1, 'm', 0},
		"empty method":     {1, kindCall, 0, 1, 1, 1, 'r', 0, 0},
		"empty reply addr": {1, kindCall, 0, 1, 1, 0, 1, 'm', 0},
		"no deadline":      {1, kindCall, flagDeadline, 1, 1, 1, 'r', 1, 'm', 1, 2, 3},
		"caps":             {1, kindCall, 0, 1, 1, 1, 'r', 1, 'm', 1},
		"reply flags":      {1, kindReply, 1, 1, 1, 0, 0, 0},
		"reply code":       {1, kindReply, 0, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0},
		"cancel trailing":  {1, kindCancel, 0, 0, 1, 1, 'r', 'x'},
		"batch of 0":       {1, kindBatch, 0, 0, 0},
		"batch too big":    binary.AppendUvarint([]byte{1, kindBatch, 0, 0}, maxBatchCalls+1),
		"method too long":  append(binary.AppendUvarint([]byte{1, kindCall, 0, 1, 1, 1, 'r'}, maxMethodLen+1), bytes.Repeat([]byte{'m'}, maxMethodLen+1)...),
	}
	for name, b := range cases {
		var e envelope
		if err := parseEnvelope(b, &e); err == nil {
			t.Errorf("%s: % x parsed as %+v", name, b, e)
		}
	}
	// Batches inside batches and trailing bytes.
	inner := appendBatchHeader(nil, 1)
	b := appendBatchHeader(nil, 1)
	b = binary.AppendUvarint(b, uint64(len(inner)))
	b = append(b, inner...)
	var e envelope
	if err := parseEnvelope(b, &e); err != nil {
		t.Fatal(err)
	}
	if err := forEachInBatch(e.id, e.payload, func([]byte) error { return nil }); err == nil {
		t.Error("nested batch accepted")
	}
	if err := forEachInBatch(1, []byte{1, 'x', 'y'}, func([]byte) error { return nil }); err == nil {
		t.Error("batch with trailing bytes accepted")
	}
}

func TestEnvelopeNoAllocs(t *testing.T) {
	b := append(appendCall(nil, codecCBOR, 1<<20, "rpc.reply.node.1234", "Add", 99), 0xa0)
	var e envelope
	if n := testing.AllocsPerRun(100, func() { parseEnvelope(b, &e) }); n != 0 {
		t.Errorf("parseEnvelope allocates %v times", n)
	}
}
