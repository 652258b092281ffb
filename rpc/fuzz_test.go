package rpc

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// FuzzEnvelope feeds arbitrary bytes to the envelope decoder: it must not
// panic, must bound what it accepts, and what it accepts must encode back
// to the same fields.
func FuzzEnvelope(f *testing.F) {
	f.Add(append(appendCall(nil, codecCBOR, 1, "rpc.reply.n.1", "Add", 123), 0xa0))
	f.Add(appendCall(nil, codecJSON, 1<<60, "tcp://127.0.0.1:1/rpc.reply.x", "M", 0))
	f.Add(append(appendReply(nil, codecCBOR, 7, OK, ""), 1, 2))
	f.Add(appendReply(nil, codecNone, 7, Internal, "panic"))
	f.Add(appendCancel(nil, 9, "r"))
	b := appendBatchHeader(nil, 2)
	for i := range 2 {
		one := appendCall(nil, codecCBOR, uint64(i), "r", "M", 0)
		b = binary.AppendUvarint(b, uint64(len(one)))
		b = append(b, one...)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var e envelope
		if err := parseEnvelope(data, &e); err != nil {
			return
		}
		if len(e.replyTo) > maxReplyToLen || len(e.method) > maxMethodLen || len(e.msg) > maxMessageLen {
			t.Fatalf("accepted a field over its bound: %+v", e)
		}
		var again []byte
		switch e.kind {
		case kindCall:
			dl := int64(0)
			if e.flags&flagDeadline != 0 {
				dl = e.deadline
				if dl == 0 {
					return // a zero deadline cannot be re-encoded with its flag
				}
			}
			again = append(appendCall(nil, e.codec, e.id, string(e.replyTo), string(e.method), dl), e.payload...)
		case kindReply:
			again = append(appendReply(nil, e.codec, e.id, Code(e.code), string(e.msg)), e.payload...)
		case kindCancel:
			if e.codec != codecNone {
				return
			}
			again = appendCancel(nil, e.id, string(e.replyTo))
		case kindBatch:
			n := uint64(0)
			forEachInBatch(e.id, e.payload, func(x []byte) error {
				var in envelope
				parseEnvelope(x, &in)
				n++
				return nil
			})
			if n > e.id {
				t.Fatalf("batch of %d yielded %d", e.id, n)
			}
			return
		}
		var e2 envelope
		if err := parseEnvelope(again, &e2); err != nil {
			t.Fatalf("re-encoded %+v does not parse: %v", e, err)
		}
		if e2.kind != e.kind || e2.id != e.id || !bytes.Equal(e2.replyTo, e.replyTo) || !bytes.Equal(e2.method, e.method) ||
			e2.deadline != e.deadline || e2.code != e.code || !bytes.Equal(e2.msg, e.msg) || !bytes.Equal(e2.payload, e.payload) {
			t.Fatalf("round trip changed %+v into %+v", e, e2)
		}
	})
}

// Types a fuzzed payload is decoded into, as a server would for
// registered methods.
type fuzzArgs struct {
	A, B  int
	S     string
	Data  []byte
	List  []int64
	M     map[string]float64
	Next  *fuzzArgs
	Any   any
	Inner struct{ X, Y uint8 }
}

// FuzzCodecDecode decodes arbitrary bytes with every codec into registered
// argument types: no panic, limits hold, and what CBOR accepts encodes and
// decodes again.
func FuzzCodecDecode(f *testing.F) {
	for _, v := range []any{
		fuzzArgs{A: 1, B: -2, S: "s", Data: []byte{1, 2}, List: []int64{1, 2, 3}, M: map[string]float64{"x": 1.5}, Next: &fuzzArgs{A: 3}, Any: []any{"a", uint64(1)}},
		map[string]any{"a": []any{1, 2, map[string]any{"b": nil}}},
	} {
		for _, c := range []Codec{CBOR, JSON} {
			b, err := c.Marshal(v)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(byte(codecID(c)), b)
		}
	}
	pb, _ := Proto.Marshal(wrapperspb.String("hello"))
	f.Add(byte(codecProto), pb)
	st, _ := structpb.NewStruct(map[string]any{"a": 1.0, "b": []any{"x", true}})
	pb, _ = Proto.Marshal(st)
	f.Add(byte(codecProto), pb)
	f.Add(byte(codecCBOR), []byte{0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(byte(codecCBOR), bytes.Repeat([]byte{0x81}, 100))
	f.Fuzz(func(t *testing.T, which byte, data []byte) {
		switch which % 3 {
		case 0:
			var a fuzzArgs
			if err := CBOR.Unmarshal(data, &a); err == nil {
				b, err := CBOR.Marshal(a)
				if err != nil {
					t.Fatalf("re-encoding %+v: %v", a, err)
				}
				var a2 fuzzArgs
				if err := CBOR.Unmarshal(b, &a2); err != nil {
					t.Fatalf("decoding the re-encoding of %+v: %v", a, err)
				}
			}
			var v any
			if err := CBOR.Unmarshal(data, &v); err == nil && depth(reflect.ValueOf(v)) > DefaultCBORLimits.MaxNestedLevels+1 {
				t.Fatalf("accepted nesting deeper than %d", DefaultCBORLimits.MaxNestedLevels)
			}
		case 1:
			var a fuzzArgs
			JSON.Unmarshal(data, &a)
			var p *wrapperspb.StringValue
			JSON.Unmarshal(data, &p)
		case 2:
			var p *wrapperspb.StringValue
			Proto.Unmarshal(data, &p)
			var s *structpb.Struct
			Proto.Unmarshal(data, &s)
		}
	})
}

func depth(v reflect.Value) int {
	for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return 0
		}
		v = v.Elem()
	}
	d := 0
	switch v.Kind() {
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			d = max(d, depth(v.Index(i)))
		}
		return d + 1
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			d = max(d, depth(it.Value()))
		}
		return d + 1
	}
	return 0
}
