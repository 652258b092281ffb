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
	f.Fuzz(func(t *testing.T, b []byte) {
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
