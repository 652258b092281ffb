package rmi

import (
	"bytes"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestWireRoundTrip(t *testing.T) {
	id := make([]byte, idLen)
	id[0] = 7
	for _, m := range []*wmsg{
		{K: kCall, ID: 1, Obj: id, M: "Add", A: []cbor.RawMessage{{0x01}}, TO: 5},
		{K: kCall, ID: 2, P: 1, M: "Next", F: fKeep},
		{K: kReply, ID: 2, E: &werr{C: "foreign-ref", M: "x"}, Ret: []uint32{0}},
		{K: kCtl, Rel: [][]byte{id}, Fin: []uint64{3}, Can: []uint64{4}},
		{K: kLookup, ID: 9, M: "svc", I: "pkg.Svc"},
	} {
		b, err := encodeMsg(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeMsg(b)
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		b2, _ := encodeMsg(got)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed %+v into %+v", m, got)
		}
	}
	for _, bad := range []*wmsg{
		{K: kCall, ID: 1, M: "Add"},                    // no target
		{K: kCall, ID: 1, Obj: id, P: 2, M: "Add"},     // two targets
		{K: kCall, ID: 1, Obj: []byte{1, 2}, M: "Add"}, // short id
		{K: kCall, Obj: id, M: "Add"},                  // no call id
		{K: kReply},                                    // no call id
		{K: 99},                                        // unknown kind
		{K: kCtl, Rel: [][]byte{{1}}},                  // short released id
		{K: kCall, ID: 1, Obj: id, M: "A", A: make([]cbor.RawMessage, maxArgs+1)}, // too many args
	} {
		for i := range bad.A {
			bad.A[i] = cbor.RawMessage{0xf6}
		}
		b, _ := encodeMsg(bad)
		if _, err := decodeMsg(b); err == nil {
			t.Fatalf("accepted %+v", bad)
		}
	}
}

// decodeBatch decodes all the messages of one loft message.
func decodeBatch(b []byte) ([]*wmsg, error) {
	bt, err := openBatch(b)
	if err != nil {
		return nil, err
	}
	var ms []*wmsg
	for {
		m, err := bt.next()
		if err != nil {
			return nil, err
		}
		if m == nil {
			return ms, nil
		}
		ms = append(ms, m)
	}
}

func TestWireBatch(t *testing.T) {
	id := make([]byte, idLen)
	var enc [][]byte
	var want []*wmsg
	for i := range 30 {
		m := &wmsg{K: kReply, ID: uint64(i + 1), A: []cbor.RawMessage{{0x01}}}
		if i%3 == 0 {
			m = &wmsg{K: kCall, ID: uint64(i + 1), P: 1, M: "Next", F: fKeep, Rel: [][]byte{id}}
		}
		b, err := encodeMsg(m)
		if err != nil {
			t.Fatal(err)
		}
		enc = append(enc, b)
		want = append(want, m)
	}
	for _, n := range []int{1, 2, 23, 24, 30} {
		b := appendBatch(nil, enc[:n])
		got, err := decodeBatch(b)
		if err != nil || len(got) != n {
			t.Fatalf("batch of %d: %d messages, %v", n, len(got), err)
		}
		for i, m := range got {
			b1, _ := encodeMsg(m)
			if !bytes.Equal(b1, enc[i]) {
				t.Fatalf("batch of %d: message %d changed: %+v, want %+v", n, i, m, want[i])
			}
		}
		if n > 1 {
			if _, err := decodeBatch(append(b, 0xf6)); err == nil {
				t.Fatalf("batch of %d with trailing bytes accepted", n)
			}
			if _, err := decodeBatch(b[:len(b)-1]); err == nil {
				t.Fatalf("truncated batch of %d accepted", n)
			}
		}
	}
	for _, bad := range [][]byte{
		{0x81, 0xa0},       // a batch of one
		{0x80},             // an empty batch
		{0x99, 0x01, 0x01}, // 257 messages
		{0x9f, 0xa0, 0xff}, // indefinite length
		{0x82, 0xa1, 0x01, 0x63, 0xa1, 0x01, 0x02}, // bad kind in the first
	} {
		if _, err := decodeBatch(bad); err == nil {
			t.Fatalf("accepted % x", bad)
		}
	}
}

// FuzzDecode: decodeMsg never panics, and what it accepts re-encodes to
// something it accepts again, unchanged.
func FuzzDecode(f *testing.F) {
	id := make([]byte, idLen)
	for _, m := range []*wmsg{
		{K: kCall, ID: 1, Obj: id, M: "Add", A: []cbor.RawMessage{{0x01}}},
		{K: kCall, ID: 2, P: 1, M: "Next", F: fKeep},
		{K: kReply, ID: 2, E: &werr{C: "x", M: "y"}},
		{K: kCtl, Rel: [][]byte{id}, Fin: []uint64{3}},
	} {
		b, _ := encodeMsg(m)
		f.Add(b)
	}
	f.Add([]byte{0xa0})
	f.Add([]byte{0xff, 0x00})
	b1, _ := encodeMsg(&wmsg{K: kReply, ID: 2})
	f.Add(appendBatch(nil, [][]byte{b1, b1, b1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ms, err := decodeBatch(b); err == nil {
			for _, m := range ms {
				if _, err := checkMsg(m); err != nil {
					t.Fatalf("batch gave a bad message: %v", err)
				}
			}
		}
		m, err := decodeMsg(b)
		if err != nil {
			return
		}
		b2, err := encodeMsg(m)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", m, err)
		}
		m2, err := decodeMsg(b2)
		if err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
		b3, _ := encodeMsg(m2)
		if !bytes.Equal(b2, b3) {
			t.Fatal("encoding not stable")
		}
		var r wref
		for _, a := range m.A {
			decMode.Unmarshal(a, &r) // arguments as references: must not panic
		}
	})
}
