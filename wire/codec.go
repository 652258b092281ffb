package wire

import (
	"encoding/binary"
	"fmt"
)

// AppendUvarint appends v as an unsigned varint.
func AppendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

// AppendString appends a length-prefixed string.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendBytes appends a length-prefixed byte slice.
func AppendBytes(b []byte, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// Decoder reads payload fields. After the first error every method returns
// a zero value and Err reports the error. A Decoder never panics.
type Decoder struct {
	b   []byte
	err error
}

// NewDecoder returns a Decoder over p.
func NewDecoder(p []byte) *Decoder { return &Decoder{b: p} }

// Err returns the first error met, wrapping ErrMalformed.
func (d *Decoder) Err() error { return d.err }

// Rest returns the bytes left and consumes them, for a caller that parses
// a run of fields itself (nil after an error).
func (d *Decoder) Rest() []byte {
	p := d.b
	d.b = nil
	return p
}

// Len reports how many bytes are left.
func (d *Decoder) Len() int { return len(d.b) }

func (d *Decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad or truncated %s", ErrMalformed, what)
	}
	d.b = nil
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Bytes reads a length-prefixed byte slice of at most max bytes. The result
// aliases the payload.
func (d *Decoder) Bytes(max int) []byte {
	n := d.Uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) || n > uint64(max) {
		d.fail("byte field")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

// String reads a length-prefixed string of at most max bytes.
func (d *Decoder) String(max int) string { return string(d.Bytes(max)) }

// Raw reads exactly n bytes.
func (d *Decoder) Raw(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("fixed field")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

// End reports ErrMalformed if bytes are left over.
func (d *Decoder) End() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b))
	}
	return d.err
}
