package rmi

import (
	"bytes"
	"errors"
	"strings"
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
		sameAsCBOR(t, m, b)
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

// sameAsCBOR checks the hand-written encoder against the cbor package.
func sameAsCBOR(t *testing.T, m *wmsg, b []byte) {
	t.Helper()
	mm := *m // (the cbor package knows A and Rel, not ar and rel)
	if mm.A == nil && mm.an > 0 {
		it := m.args()
		for a := it.next(); a != nil; a = it.next() {
			mm.A = append(mm.A, a)
		}
	}
	for i := range m.rel {
		mm.Rel = append(mm.Rel, m.rel[i][:])
	}
	want, err := encMode.Marshal(&mm)
	if err != nil {
		t.Fatalf("cbor package: %v", err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("encodeMsg(%+v) = % x, the cbor package gives % x", m, b, want)
	}
}

func TestWireEncoder(t *testing.T) {
	id := make([]byte, idLen)
	long := strings.Repeat("x", 300)
	for _, m := range []*wmsg{
		{},
		{K: kCall, ID: 23, Obj: id, M: "A", F: fKeep, TO: 24},
		{K: kCall, ID: 255, P: 256, M: long, TO: -1},
		{K: kCall, ID: 65535, P: 65536, TO: -25, I: "i"},
		{K: kReply, ID: 1<<32 - 1, A: []cbor.RawMessage{{0x01}, nil, {0x82, 0x01, 0x02}}, Ret: []uint32{0, 23, 24, 1<<32 - 1}},
		{K: kReply, ID: 1 << 32, E: &werr{}},
		{K: kReply, ID: 1<<64 - 1, E: &werr{C: "c"}},
		{K: kReply, ID: 2, E: &werr{M: long}},
		{K: kCtl, Rel: [][]byte{id, nil, {}}, Fin: []uint64{0, 1 << 40}, Can: []uint64{7}, TO: -1 << 63},
		{K: kCtl, Obj: []byte{}, A: []cbor.RawMessage{}, Rel: [][]byte{}, Fin: []uint64{}},
	} {
		b, err := encodeMsg(m)
		if err != nil {
			t.Fatal(err)
		}
		sameAsCBOR(t, m, b)
	}
	for _, k := range []uint8{refSender, refReceiver} {
		want, _ := encMode.Marshal(wref{K: k, ID: id})
		if got := appendRef(nil, k, id); !bytes.Equal(got, want) {
			t.Fatalf("appendRef = % x, want % x", got, want)
		}
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
	f.Add([]byte{0xa3, 0x01, 0x02, 0x02, 0x05, 0x06, 0x82, 0xa2, 0x01, 0x01, 0x02, 0x41, 0x00, 0xf9, 0x3c, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if fm, rest, ok := fastMsg(b); ok {
			// The fast path accepts only what decMode accepts, the same.
			var lm wmsg
			lrest, err := decMode.UnmarshalFirst(b, &lm)
			if err != nil {
				t.Fatalf("fast path accepted what decMode refuses: %v", err)
			}
			e1, _ := encodeMsg(fm)
			e2, _ := encodeMsg(&lm)
			if len(rest) != len(lrest) || !bytes.Equal(e1, e2) {
				t.Fatalf("fast path decoded %+v (rest %d), decMode %+v (rest %d)", fm, len(rest), &lm, len(lrest))
			}
		}
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
		sameAsCBOR(t, m, b2)
		m2, err := decodeMsg(b2)
		if err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
		b3, _ := encodeMsg(m2)
		if !bytes.Equal(b2, b3) {
			t.Fatal("encoding not stable")
		}
		it := m.args()
		for a := it.next(); a != nil; a = it.next() {
			// arguments as references: must not panic, fast path as decMode
			var r1, r2 wref
			e1, e2 := decodeRefRaw(a, &r1), decMode.Unmarshal(a, &r2)
			if (e1 == nil) != (e2 == nil) || e1 == nil && (r1.K != r2.K || !bytes.Equal(r1.ID, r2.ID)) {
				t.Fatalf("reference % x: %+v %v, decMode %+v %v", a, r1, e1, r2, e2)
			}
		}
	})
}

// The fast paths of values and references give what encMode and decMode
// give.
func TestWireFastValues(t *testing.T) {
	for _, v := range []any{0, 1, 23, 24, 255, 256, 65535, 65536, 1 << 40, -1, -24, -25, -1 << 40, int64(-1 << 63), int64(1<<63 - 1),
		"", "x", strings.Repeat("y", 300), "\xff", true, false, 1.5, []byte{1}} {
		got, err := marshalValue(v)
		want, err2 := encMode.Marshal(v)
		if (err == nil) != (err2 == nil) || !bytes.Equal(got, want) {
			t.Fatalf("%#v: % x %v, encMode % x %v", v, got, err, want, err2)
		}
		var s1, s2 string
		e1, e2 := unmarshalValue(want, &s1), decMode.Unmarshal(want, &s2)
		if (e1 == nil) != (e2 == nil) || s1 != s2 {
			t.Fatalf("string from % x: %q %v, decMode %q %v", want, s1, e1, s2, e2)
		}
		var i1, i2 int
		e1, e2 = unmarshalValue(want, &i1), decMode.Unmarshal(want, &i2)
		if (e1 == nil) != (e2 == nil) || i1 != i2 {
			t.Fatalf("int from % x: %d %v, decMode %d %v", want, i1, e1, i2, e2)
		}
	}
	id := bytes.Repeat([]byte{9}, idLen)
	for _, raw := range [][]byte{appendRef(nil, refSender, id), appendRef(nil, refReceiver, id), appendRef(nil, 30, id), {0xf6}, {0xa0}} {
		var r1, r2 wref
		e1, e2 := decodeRefRaw(raw, &r1), decMode.Unmarshal(raw, &r2)
		if (e1 == nil) != (e2 == nil) || r1.K != r2.K || !bytes.Equal(r1.ID, r2.ID) {
			t.Fatalf("ref % x: %+v %v, decMode %+v %v", raw, r1, e1, r2, e2)
		}
	}
}

// TestWireTaggedArguments: arguments with tags go through the slow path;
// a tag its content fits is taken (a bignum, which a big.Int argument
// becomes), one it does not fit (an epoch time that is a byte string, in
// a map: FuzzDecode's find) is refused with ErrBadMessage.
func TestWireTaggedArguments(t *testing.T) {
	reply := func(arg []byte) []byte {
		b, err := encMode.Marshal(&wmsg{K: kReply, ID: 5, A: []cbor.RawMessage{{0x01}, arg}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	m, err := decodeMsg(reply([]byte{0xc2, 0x42, 0x01, 0x00})) // tag 2: bignum 256
	if err != nil || m.nargs() != 2 {
		t.Fatalf("a bignum argument: %+v, %v", m, err)
	}
	// {1: 1, 2: bignum h'3030'}, the last item, made {1: 1, 2: tag 1
	// around h'3030'}: nested, which the cbor package's decoding takes.
	bad := reply([]byte{0xa2, 0x01, 0x01, 0x02, 0xc2, 0x42, 0x30, 0x30})
	bad[len(bad)-4] = 0xc1
	if _, err := decodeMsg(bad); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("tag 1 around a byte string in a map: %v, want ErrBadMessage", err)
	}
}
