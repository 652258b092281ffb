package rmi

import (
	"fmt"
	"sync"
	"unicode/utf8"

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

	// Without reflection (fastMsg, and the encoders of calls and replies)
	// the arguments or results travel as ar, their an encoded items one
	// after another, instead of A (a slice per message, and one per item);
	// a message has A or ar, not both. Likewise rel holds released ids
	// that appendMsg writes after those of Rel (slices of peer.rel, no
	// copy). The cbor package ignores these unexported fields.
	ar  []byte
	an  int
	rel []objID
}

// nargs returns the number of arguments (results) of m.
func (m *wmsg) nargs() int {
	if m.A != nil {
		return len(m.A)
	}
	return m.an
}

// args returns an iterator over the arguments (results) of m.
func (m *wmsg) args() argIter { return argIter{a: m.A, r: m.ar} }

// argIter walks the arguments of a message, in A or in ar.
type argIter struct {
	a []cbor.RawMessage
	r []byte
}

// next returns the next argument (nil after the last one). The items of
// ar are well-formed: fastMsg checked them, or this process wrote them.
func (it *argIter) next() []byte {
	if it.a != nil {
		if len(it.a) == 0 {
			return nil
		}
		x := it.a[0]
		it.a = it.a[1:]
		if len(x) == 0 {
			x = cbor.RawMessage{0xf6} // (as appendMsg writes it)
		}
		return x
	}
	if len(it.r) == 0 {
		return nil
	}
	item, rest, ok := skipItem(it.r, 0)
	if !ok { // (not from fastMsg: written here by encMode; cannot happen)
		item, rest = it.r, nil
	}
	it.r = rest
	return item
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

// Decoded messages are recycled (a message per call and per reply was a
// good part of the bytes allocated per call): newMsg returns a zero
// message, and freeMsg takes back one that nothing refers to any more.
// Freed: replies once handled (a promise's in handle, a waiting caller's
// once Call0/1/2 decoded its results), control messages once handled,
// calls once runChain sent or held their reply. A message not freed is
// simply collected.
var msgPool = sync.Pool{New: func() any { return new(wmsg) }}

func newMsg() *wmsg { return msgPool.Get().(*wmsg) }

func freeMsg(m *wmsg) {
	*m = wmsg{}
	msgPool.Put(m)
}

// decodeMsg decodes and checks one message.
func decodeMsg(b []byte) (*wmsg, error) {
	if m, rest, ok := fastMsg(b); ok && len(rest) == 0 {
		return checkMsg(m)
	}
	var m wmsg
	if err := decMode.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	// Arguments the fast path declined (tags, say) are checked as the
	// encoder checks them: nested in a map or an array, a tag that its
	// content does not fit (an epoch time that is a byte string) passes
	// the cbor package's decoding, and no decoding into a Go value
	// accepts it, nor its encoder sends it on.
	for i, a := range m.A {
		if _, err := encMode.Marshal(a); err != nil {
			return nil, fmt.Errorf("%w: argument %d: %v", ErrBadMessage, i+1, err)
		}
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
	if m.nargs() > maxArgs {
		return nil, fmt.Errorf("%w: %d arguments", ErrBadMessage, m.nargs())
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
	return appendMsg(make([]byte, 0, 64+len(m.M)+len(m.I)+rawLen(m.A)+len(m.ar)+(len(m.Rel)+len(m.rel))*(idLen+1)), m), nil
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
	for _, present := range [...]bool{m.ID != 0, len(m.Obj) > 0, m.P != 0, m.M != "", m.nargs() > 0, m.F != 0, m.E != nil,
		len(m.Ret) > 0, len(m.Rel)+len(m.rel) > 0, len(m.Fin) > 0, len(m.Can) > 0, m.TO != 0, m.I != ""} {
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
	if m.an > 0 && m.A == nil {
		b = append(appendHead(append(b, 6), cbArray, uint64(m.an)), m.ar...)
	} else if len(m.A) > 0 {
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
	if len(m.Rel)+len(m.rel) > 0 {
		b = appendHead(append(b, 10), cbArray, uint64(len(m.Rel)+len(m.rel)))
		for _, v := range m.Rel {
			b = appendBytes(b, v)
		}
		for i := range m.rel {
			b = appendBytes(b, m.rel[i][:])
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
	m, rest, ok := fastMsg(bt.rest)
	var err error
	if !ok {
		m = &wmsg{}
		rest, err = decMode.UnmarshalFirst(bt.rest, m)
	}
	if err == nil && bt.n == 0 && len(rest) > 0 {
		err = fmt.Errorf("%d bytes after the batch", len(rest))
	}
	if err != nil {
		bt.n = 0
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	bt.rest = rest
	if _, err := checkMsg(m); err != nil {
		bt.n = 0
		return nil, err
	}
	return m, nil
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

// fastMsg decodes the first message of b without reflection when it is
// in the form appendMsg writes (definite lengths, known keys once each,
// the types of wmsg), and reports ok = false for anything else, which the
// caller then hands to decMode (same result or the same error, only
// slower). Byte strings and arguments alias b (loft never reuses a
// message's buffer).
func fastMsg(b []byte) (m *wmsg, rest []byte, ok bool) {
	major, n, b, ok := head(b)
	if !ok || major != cbMap || n > 14 {
		return nil, nil, false
	}
	m = newMsg()
	var seen uint16
	for range n {
		var key, v uint64
		if key, b, ok = uintItem(b); !ok || key == 0 || key > 14 || seen&(1<<key) != 0 {
			return nil, nil, false
		}
		seen |= 1 << key
		switch key {
		case 1, 7:
			if v, b, ok = uintItem(b); !ok || v > 0xff {
				return nil, nil, false
			}
			if key == 1 {
				m.K = uint8(v)
			} else {
				m.F = uint8(v)
			}
		case 2:
			m.ID, b, ok = uintItem(b)
		case 4:
			m.P, b, ok = uintItem(b)
		case 3:
			m.Obj, b, ok = bytesItem(b)
		case 5:
			m.M, b, ok = methodItem(b)
		case 14:
			m.I, b, ok = textItem(b)
		case 6:
			if major, n, b, ok = head(b); !ok || major != cbArray || n > 1<<16 || n > uint64(len(b)) {
				return nil, nil, false // (every item is at least a byte)
			}
			start := b
			for range n {
				if _, b, ok = skipItem(b, 0); !ok {
					return nil, nil, false
				}
			}
			if n > 0 {
				m.ar, m.an = start[:len(start)-len(b):len(start)-len(b)], int(n)
			}
		case 8:
			if major, n, b, ok = head(b); !ok || major != cbMap || n > 2 {
				return nil, nil, false
			}
			m.E = &werr{}
			var eseen uint8
			for range n {
				var ek uint64
				var s string
				if ek, b, ok = uintItem(b); !ok || ek < 1 || ek > 2 || eseen&(1<<ek) != 0 {
					return nil, nil, false
				}
				eseen |= 1 << ek
				if s, b, ok = textItem(b); !ok {
					return nil, nil, false
				}
				if ek == 1 {
					m.E.C = s
				} else {
					m.E.M = s
				}
			}
		case 9:
			var vs []uint64
			if vs, b, ok = uintsItem(b); ok {
				m.Ret = make([]uint32, len(vs))
				for i, v := range vs {
					if v > 0xffffffff {
						return nil, nil, false
					}
					m.Ret[i] = uint32(v)
				}
			}
		case 10:
			if major, n, b, ok = head(b); !ok || major != cbArray || n > 1<<16 || n > uint64(len(b)) {
				return nil, nil, false
			}
			m.Rel = make([][]byte, n)
			for i := range m.Rel {
				if m.Rel[i], b, ok = bytesItem(b); !ok {
					return nil, nil, false
				}
			}
		case 11:
			m.Fin, b, ok = uintsItem(b)
		case 12:
			m.Can, b, ok = uintsItem(b)
		case 13:
			if major, v, b, ok = head(b); !ok || v > 1<<63-1 || major != cbUint && major != cbNeg {
				return nil, nil, false
			}
			m.TO = int64(v)
			if major == cbNeg {
				m.TO = -1 - int64(v)
			}
		}
		if !ok {
			return nil, nil, false
		}
	}
	return m, b, true
}

// head reads the head of a data item with a definite length or value.
func head(b []byte) (major byte, n uint64, rest []byte, ok bool) {
	if len(b) == 0 {
		return 0, 0, nil, false
	}
	major, ai := b[0]>>5, b[0]&0x1f
	switch {
	case ai < 24:
		return major, uint64(ai), b[1:], true
	case ai == 24 && len(b) >= 2:
		return major, uint64(b[1]), b[2:], true
	case ai == 25 && len(b) >= 3:
		return major, uint64(b[1])<<8 | uint64(b[2]), b[3:], true
	case ai == 26 && len(b) >= 5:
		return major, uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4]), b[5:], true
	case ai == 27 && len(b) >= 9:
		var v uint64
		for _, c := range b[1:9] {
			v = v<<8 | uint64(c)
		}
		return major, v, b[9:], true
	}
	return 0, 0, nil, false
}

func uintItem(b []byte) (uint64, []byte, bool) {
	major, v, b, ok := head(b)
	return v, b, ok && major == cbUint
}

func bytesItem(b []byte) ([]byte, []byte, bool) {
	major, n, b, ok := head(b)
	if !ok || major != cbBytes || n > uint64(len(b)) {
		return nil, nil, false
	}
	return b[:n:n], b[n:], true
}

func textItem(b []byte) (string, []byte, bool) {
	major, n, b, ok := head(b)
	if !ok || major != cbText || n > uint64(len(b)) || !utf8.Valid(b[:n]) {
		return "", nil, false
	}
	return string(b[:n]), b[n:], true
}

func uintsItem(b []byte) ([]uint64, []byte, bool) {
	major, n, b, ok := head(b)
	if !ok || major != cbArray || n > 1<<16 || n > uint64(len(b)) {
		return nil, nil, false
	}
	vs := make([]uint64, n)
	for i := range vs {
		if vs[i], b, ok = uintItem(b); !ok {
			return nil, nil, false
		}
	}
	return vs, b, true
}

// skipItem returns the first data item of b and what follows it, for the
// well-formed items the fast path accepts (definite lengths, no tags, no
// simple values but false, true, null and undefined, floats, UTF-8 text,
// nesting at most 16 below the argument array).
func skipItem(b []byte, depth int) (item, rest []byte, ok bool) {
	if depth > 16 || len(b) == 0 {
		return nil, nil, false
	}
	major, n, r, ok := head(b)
	if major == 7 {
		switch ai := b[0] & 0x1f; {
		case ai >= 20 && ai <= 23:
			return b[:1], b[1:], true
		case ai == 25 && len(b) >= 3:
			return b[:3], b[3:], true
		case ai == 26 && len(b) >= 5:
			return b[:5], b[5:], true
		case ai == 27 && len(b) >= 9:
			return b[:9], b[9:], true
		}
		return nil, nil, false
	}
	if !ok {
		return nil, nil, false
	}
	switch major {
	case cbUint, cbNeg:
	case cbBytes, cbText:
		if n > uint64(len(r)) || major == cbText && !utf8.Valid(r[:n]) {
			return nil, nil, false
		}
		r = r[n:]
	case cbArray, cbMap:
		if n > 1<<16 || n > uint64(len(r)) {
			return nil, nil, false
		}
		if major == cbMap {
			n *= 2
		}
		for range n {
			if _, r, ok = skipItem(r, depth+1); !ok {
				return nil, nil, false
			}
		}
	default:
		return nil, nil, false
	}
	return b[: len(b)-len(r) : len(b)-len(r)], r, true
}

// decodeRefRaw decodes a reference {1: kind, 2: id} into r: without
// reflection when it is in the form appendRef writes, else with decMode.
func decodeRefRaw(raw []byte, r *wref) error {
	if len(raw) == 5+idLen && raw[0] == 0xa2 && raw[1] == 1 && raw[2] < 24 && raw[3] == 2 && raw[4] == 0x40|idLen {
		r.K, r.ID = raw[2], raw[5:5+idLen:5+idLen]
		return nil
	}
	return decodeRefSlow(raw, r)
}

// decodeRefSlow decodes a reference the general way. (Apart, so that only
// this path's wref escapes to the heap, not every caller's.)
func decodeRefSlow(raw []byte, r *wref) error {
	var x wref
	err := decMode.Unmarshal(raw, &x)
	*r = x
	return err
}

// marshalValue encodes v as encMode does; common basic types without
// reflection.
func marshalValue(v any) ([]byte, error) { return appendValue(nil, v) }

// appendValue appends the encoding of v to b, as marshalValue.
func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case int:
		return appendInt(b, int64(x)), nil
	case int64:
		return appendInt(b, x), nil
	case string:
		if utf8.ValidString(x) {
			return appendText(b, x), nil
		}
	case bool:
		if x {
			return append(b, 0xf5), nil
		}
		return append(b, 0xf4), nil
	}
	e, err := encMode.Marshal(v)
	return append(b, e...), err
}

func appendInt(b []byte, v int64) []byte {
	if v < 0 {
		return appendHead(b, cbNeg, uint64(-1-v))
	}
	return appendHead(b, cbUint, uint64(v))
}

// unmarshalValue decodes raw into the value p points to as decMode does;
// a string or an int from a plain text or integer item without reflection.
func unmarshalValue(raw []byte, p any) error {
	if fastValue(raw, p) {
		return nil
	}
	return decMode.Unmarshal(raw, p)
}

// fastValue decodes raw into *p when p is a *string or an *int and raw a
// plain text or integer item, and reports whether it did.
func fastValue(raw []byte, p any) bool {
	switch x := p.(type) {
	case *string:
		if s, rest, ok := textItem(raw); ok && len(rest) == 0 {
			*x = s
			return true
		}
	case *int:
		if major, n, rest, ok := head(raw); ok && len(rest) == 0 && n <= 1<<63-1 && (major == cbUint || major == cbNeg) {
			*x = int(n)
			if major == cbNeg {
				*x = -1 - int(n)
			}
			return true
		}
	}
	return false
}

// unmarshalInto decodes raw into *p as unmarshalValue does, without
// making p escape (the general case decodes into a copy).
func unmarshalInto[T any](raw []byte, p *T) error {
	if fastValue(raw, p) {
		return nil
	}
	q := new(T)
	err := decMode.Unmarshal(raw, q)
	*p = *q
	return err
}

// appendString appends the encoding of s as appendValue does.
func appendString(b []byte, s string) ([]byte, error) {
	if utf8.ValidString(s) {
		return appendText(b, s), nil
	}
	return appendValue(b, s)
}
