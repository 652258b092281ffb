package rmi

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Message kinds. See SPEC.md.
const (
	kCall   = 1 // call a method on an object or on a promise
	kReply  = 2 // result or error of a call
	kLookup = 3 // ask for a published object by name
	kCtl    = 4 // releases, finished answers, cancels
)

// Call flags.
const (
	fKeep = 1 // keep the answer: later calls may target it as a promise
)

// Reference kinds inside arguments and results.
const (
	refSender   = 1 // an object of the sender, exported to the receiver
	refReceiver = 2 // an object of the receiver, given back to it
)

// wmsg is the one message shape of the protocol (a CBOR map with small
// integer keys; absent fields are zero).
type wmsg struct {
	K   uint8             `cbor:"1,keyasint"`
	ID  uint64            `cbor:"2,keyasint,omitempty"`
	Obj []byte            `cbor:"3,keyasint,omitempty"`
	P   uint64            `cbor:"4,keyasint,omitempty"`
	M   string            `cbor:"5,keyasint,omitempty"`
	A   []cbor.RawMessage `cbor:"6,keyasint,omitempty"`
	F   uint8             `cbor:"7,keyasint,omitempty"`
	E   *werr             `cbor:"8,keyasint,omitempty"`
	Ret []uint32          `cbor:"9,keyasint,omitempty"`
	Rel [][]byte          `cbor:"10,keyasint,omitempty"`
	Fin []uint64          `cbor:"11,keyasint,omitempty"`
	Can []uint64          `cbor:"12,keyasint,omitempty"`
	TO  int64             `cbor:"13,keyasint,omitempty"`
	I   string            `cbor:"14,keyasint,omitempty"`
}

type werr struct {
	C string `cbor:"1,keyasint,omitempty"`
	M string `cbor:"2,keyasint,omitempty"`
}

type wref struct {
	K  uint8  `cbor:"1,keyasint"`
	ID []byte `cbor:"2,keyasint"`
}

// Limits of the decoder: a peer cannot make us allocate without bound.
const (
	maxArgs     = 64
	maxRefBatch = 4096
	maxBatch    = 256 // messages in one loft message
)

// batchBytes is the size beyond which a sender starts a new loft message
// instead of adding to a batch.
const batchBytes = 64 << 10

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		MaxNestedLevels:  32,
		MaxArrayElements: 1 << 16,
		MaxMapPairs:      1 << 16,
		IndefLength:      cbor.IndefLengthForbidden,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// decodeMsg decodes and checks one message.
func decodeMsg(b []byte) (*wmsg, error) {
	var m wmsg
	if err := decMode.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	return checkMsg(&m)
}

// checkMsg checks a decoded message.
func checkMsg(m *wmsg) (*wmsg, error) {
	switch m.K {
	case kCall:
		if (len(m.Obj) == 0) == (m.P == 0) {
			return nil, fmt.Errorf("%w: a call names an object or a promise, not both", ErrBadMessage)
		}
		if len(m.Obj) != 0 && len(m.Obj) != idLen {
			return nil, fmt.Errorf("%w: object id of %d bytes", ErrBadMessage, len(m.Obj))
		}
		if m.ID == 0 || m.M == "" {
			return nil, fmt.Errorf("%w: call without id or method", ErrBadMessage)
		}
	case kReply, kLookup:
		if m.ID == 0 {
			return nil, fmt.Errorf("%w: message without call id", ErrBadMessage)
		}
	case kCtl:
	default:
		return nil, fmt.Errorf("%w: kind %d", ErrBadMessage, m.K)
	}
	if len(m.A) > maxArgs {
		return nil, fmt.Errorf("%w: %d arguments", ErrBadMessage, len(m.A))
	}
	if len(m.Rel)+len(m.Fin)+len(m.Can)+len(m.Ret) > maxRefBatch {
		return nil, fmt.Errorf("%w: control batch too long", ErrBadMessage)
	}
	for _, id := range m.Rel {
		if len(id) != idLen {
			return nil, fmt.Errorf("%w: released id of %d bytes", ErrBadMessage, len(id))
		}
	}
	return m, nil
}

// encodeMsg encodes m as encMode (core deterministic CBOR) would, without
// reflection: a map of the non-zero fields in key order.
func encodeMsg(m *wmsg) ([]byte, error) {
	return appendMsg(make([]byte, 0, 64+len(m.M)+len(m.I)+rawLen(m.A)+len(m.Rel)*(idLen+1)), m), nil
}

func rawLen(a []cbor.RawMessage) int {
	n := 0
	for _, r := range a {
		n += len(r)
	}
	return n
}

// CBOR major types.
const (
	cbUint  = 0
	cbNeg   = 1
	cbBytes = 2
	cbText  = 3
	cbArray = 4
	cbMap   = 5
)

func appendHead(b []byte, major byte, n uint64) []byte {
	major <<= 5
	switch {
	case n < 24:
		return append(b, major|byte(n))
	case n <= 0xff:
		return append(b, major|24, byte(n))
	case n <= 0xffff:
		return append(b, major|25, byte(n>>8), byte(n))
	case n <= 0xffffffff:
		return append(b, major|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, major|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendBytes(b []byte, v []byte) []byte {
	if v == nil {
		return append(b, 0xf6) // as encMode: a nil slice is null
	}
	return append(appendHead(b, cbBytes, uint64(len(v))), v...)
}

func appendText(b []byte, v string) []byte {
	return append(appendHead(b, cbText, uint64(len(v))), v...)
}

func appendMsg(b []byte, m *wmsg) []byte {
	n := uint64(1)
	for _, present := range [...]bool{m.ID != 0, len(m.Obj) > 0, m.P != 0, m.M != "", len(m.A) > 0, m.F != 0, m.E != nil,
		len(m.Ret) > 0, len(m.Rel) > 0, len(m.Fin) > 0, len(m.Can) > 0, m.TO != 0, m.I != ""} {
		if present {
			n++
		}
	}
	b = appendHead(b, cbMap, n)
	b = appendHead(append(b, 1), cbUint, uint64(m.K))
	if m.ID != 0 {
		b = appendHead(append(b, 2), cbUint, m.ID)
	}
	if len(m.Obj) > 0 {
		b = appendBytes(append(b, 3), m.Obj)
	}
	if m.P != 0 {
		b = appendHead(append(b, 4), cbUint, m.P)
	}
	if m.M != "" {
		b = appendText(append(b, 5), m.M)
	}
	if len(m.A) > 0 {
		b = appendHead(append(b, 6), cbArray, uint64(len(m.A)))
		for _, r := range m.A {
			if len(r) == 0 {
				b = append(b, 0xf6)
			} else {
				b = append(b, r...)
			}
		}
	}
	if m.F != 0 {
		b = appendHead(append(b, 7), cbUint, uint64(m.F))
	}
	if m.E != nil {
		b = append(b, 8)
		b = appendHead(b, cbMap, uint64(btoi(m.E.C != "")+btoi(m.E.M != "")))
		if m.E.C != "" {
			b = appendText(append(b, 1), m.E.C)
		}
		if m.E.M != "" {
			b = appendText(append(b, 2), m.E.M)
		}
	}
	if len(m.Ret) > 0 {
		b = appendHead(append(b, 9), cbArray, uint64(len(m.Ret)))
		for _, v := range m.Ret {
			b = appendHead(b, cbUint, uint64(v))
		}
	}
	if len(m.Rel) > 0 {
		b = appendHead(append(b, 10), cbArray, uint64(len(m.Rel)))
		for _, v := range m.Rel {
			b = appendBytes(b, v)
		}
	}
	for _, f := range [...]struct {
		key byte
		v   []uint64
	}{{11, m.Fin}, {12, m.Can}} {
		if len(f.v) > 0 {
			b = appendHead(append(b, f.key), cbArray, uint64(len(f.v)))
			for _, v := range f.v {
				b = appendHead(b, cbUint, v)
			}
		}
	}
	if m.TO > 0 {
		b = appendHead(append(b, 13), cbUint, uint64(m.TO))
	} else if m.TO < 0 {
		b = appendHead(append(b, 13), cbNeg, uint64(-1-m.TO))
	}
	if m.I != "" {
		b = appendText(append(b, 14), m.I)
	}
	return b
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// appendRef appends a reference {1: kind, 2: id} as encMode would.
func appendRef(b []byte, kind uint8, id []byte) []byte {
	b = append(b, 0xa2, 1)
	b = appendHead(b, cbUint, uint64(kind))
	return appendBytes(append(b, 2), id)
}

// batch reads the messages of one loft message: a single message (a CBOR
// map) or a batch (a CBOR array of 2 to maxBatch maps). Messages are
// decoded one at a time, so the first can be handled before the others
// are decoded; a bad message ends the batch.
type batch struct {
	rest   []byte
	n      int  // messages left
	single bool // rest is one message, not an array
}

func openBatch(b []byte) (batch, error) {
	if len(b) == 0 || b[0]>>5 != 4 {
		return batch{rest: b, n: 1, single: true}, nil
	}
	var n, h int
	switch ai := b[0] & 0x1f; {
	case ai < 24:
		n, h = int(ai), 1
	case ai == 24 && len(b) >= 2:
		n, h = int(b[1]), 2
	case ai == 25 && len(b) >= 3:
		n, h = int(b[1])<<8|int(b[2]), 3
	default:
		return batch{}, fmt.Errorf("%w: batch header", ErrBadMessage)
	}
	if n < 2 || n > maxBatch {
		return batch{}, fmt.Errorf("%w: batch of %d messages", ErrBadMessage, n)
	}
	return batch{rest: b[h:], n: n}, nil
}

// next decodes the next message; nil, nil at the end.
func (bt *batch) next() (*wmsg, error) {
	if bt.n == 0 {
		return nil, nil
	}
	bt.n--
	if bt.single {
		return decodeMsg(bt.rest)
	}
	var m wmsg
	rest, err := decMode.UnmarshalFirst(bt.rest, &m)
	if err == nil && bt.n == 0 && len(rest) > 0 {
		err = fmt.Errorf("%d bytes after the batch", len(rest))
	}
	if err != nil {
		bt.n = 0
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	bt.rest = rest
	if _, err := checkMsg(&m); err != nil {
		bt.n = 0
		return nil, err
	}
	return &m, nil
}

// appendBatch appends to buf the loft message carrying the encoded
// messages enc: the message itself if there is one, else a CBOR array.
func appendBatch(buf []byte, enc [][]byte) []byte {
	switch n := len(enc); {
	case n == 1:
		return append(buf, enc[0]...)
	case n < 24:
		buf = append(buf, 0x80|byte(n))
	case n < 256:
		buf = append(buf, 0x98, byte(n))
	default:
		buf = append(buf, 0x99, byte(n>>8), byte(n))
	}
	for _, e := range enc {
		buf = append(buf, e...)
	}
	return buf
}
