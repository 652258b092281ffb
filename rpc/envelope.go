package rpc

import (
	"encoding/binary"
	"fmt"
)

// The envelope is the binary header every RPC message starts with; the
// codec-encoded payload follows it. rpc/SPEC.md is the normative
// description; keep the two in step.

const envVersion = 1

// Envelope kinds.
const (
	kindCall   = 1
	kindReply  = 2
	kindCancel = 3
	kindBatch  = 4
)

// Envelope flags.
const (
	flagDeadline = 1 << 0 // CALL: an 8-byte deadline follows the method
	knownFlags   = flagDeadline
)

// Codec ids on the wire.
const (
	codecNone   = 0
	codecCBOR   = 1
	codecJSON   = 2
	codecProto  = 3
	codecCustom = 128 // the service's own application codec
)

// Bounds of the variable-length fields.
const (
	maxMethodLen  = 255
	maxReplyToLen = 1024
	maxMessageLen = 8 << 10
	maxBatchCalls = 4096
	fixedHeader   = 4 // version, kind, flags, codec
)

// envelope is a decoded envelope. Its byte slices alias the message.
type envelope struct {
	kind     byte
	flags    byte
	codec    byte
	id       uint64
	replyTo  []byte
	method   []byte
	deadline int64 // unix nanoseconds; valid if flags&flagDeadline
	code     uint64
	msg      []byte
	payload  []byte
}

// envError is a decoding error. It tells how far decoding got, so that a
// server can still answer a call whose reply address it read.
type envError struct {
	what string
}

func (e *envError) Error() string { return "rpc: malformed envelope: " + e.what }
func (e *envError) Unwrap() error { return ErrBadEnvelope }

func badEnv(format string, args ...any) error {
	return &envError{what: fmt.Sprintf(format, args...)}
}

// envReader reads envelope fields, bounding every length by what is left.
type envReader struct {
	b   []byte
	err error
}

func (r *envReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = badEnv("%s: truncated or overlong varint", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *envReader) bytes(what string, max int, allowEmpty bool) []byte {
	if r.err != nil {
		return nil
	}
	n, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.err = badEnv("%s length: truncated or overlong varint", what)
		return nil
	}
	r.b = r.b[k:]
	if n > uint64(max) {
		r.err = badEnv("%s is %d bytes, at most %d allowed", what, n, max)
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = badEnv("%s claims %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	if n == 0 && !allowEmpty {
		r.err = badEnv("%s is empty", what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *envReader) fixed64(what string) int64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.err = badEnv("%s: truncated", what)
		return 0
	}
	v := int64(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

// parseEnvelope decodes b into e. On error, the fields decoded before the
// fault are set (kind, id and, for a call, replyTo may be usable). It never
// panics and never allocates.
func parseEnvelope(b []byte, e *envelope) error {
	*e = envelope{}
	if len(b) < fixedHeader {
		return badEnv("%d bytes, shorter than the %d-byte fixed header", len(b), fixedHeader)
	}
	if b[0] != envVersion {
		return badEnv("version %d, this side speaks %d", b[0], envVersion)
	}
	e.kind, e.flags, e.codec = b[1], b[2], b[3]
	r := envReader{b: b[fixedHeader:]}
	switch e.kind {
	case kindCall:
		e.id = r.uvarint("call id")
		e.replyTo = r.bytes("reply address", maxReplyToLen, false)
		if r.err != nil {
			return r.err
		}
		if e.flags&^knownFlags != 0 {
			return badEnv("unknown flags %#x", e.flags)
		}
		e.method = r.bytes("method", maxMethodLen, false)
		if e.flags&flagDeadline != 0 {
			e.deadline = r.fixed64("deadline")
		}
		if ncaps := r.uvarint("capability count"); r.err == nil && ncaps != 0 {
			return badEnv("%d capabilities: version %d carries none", ncaps, envVersion)
		}
	case kindReply:
		e.id = r.uvarint("call id")
		if r.err == nil && e.flags != 0 {
			return badEnv("unknown flags %#x", e.flags)
		}
		e.code = r.uvarint("code")
		if r.err == nil && e.code > 1<<32-1 {
			return badEnv("code %d does not fit 32 bits", e.code)
		}
		e.msg = r.bytes("error message", maxMessageLen, true)
		if ncaps := r.uvarint("capability count"); r.err == nil && ncaps != 0 {
			return badEnv("%d capabilities: version %d carries none", ncaps, envVersion)
		}
	case kindCancel:
		e.id = r.uvarint("call id")
		e.replyTo = r.bytes("reply address", maxReplyToLen, false)
		if r.err == nil && e.flags != 0 {
			return badEnv("unknown flags %#x", e.flags)
		}
		if r.err == nil && len(r.b) != 0 {
			return badEnv("cancel with %d trailing bytes", len(r.b))
		}
	case kindBatch:
		if e.flags != 0 {
			return badEnv("unknown flags %#x", e.flags)
		}
		n := r.uvarint("batch count")
		if r.err == nil && (n == 0 || n > maxBatchCalls) {
			return badEnv("batch of %d envelopes, 1 to %d allowed", n, maxBatchCalls)
		}
		e.id = n
	default:
		return badEnv("unknown kind %d", e.kind)
	}
	if r.err != nil {
		return r.err
	}
	e.payload = r.b
	return nil
}

// forEachInBatch calls fn on each envelope of a batch whose count and
// payload parseEnvelope returned. It stops at the first error.
func forEachInBatch(count uint64, payload []byte, fn func([]byte) error) error {
	r := envReader{b: payload}
	for i := uint64(0); i < count; i++ {
		inner := r.bytes("batched envelope", len(payload), false)
		if r.err != nil {
			return r.err
		}
		if inner[0] == envVersion && len(inner) > 1 && inner[1] == kindBatch {
			return badEnv("batch inside a batch")
		}
		if err := fn(inner); err != nil {
			return err
		}
	}
	if len(r.b) != 0 {
		return badEnv("batch with %d trailing bytes", len(r.b))
	}
	return nil
}

// appendCall appends the envelope of a call, without its payload.
// deadline is unix nanoseconds, 0 for none.
func appendCall(dst []byte, codec byte, id uint64, replyTo, method string, deadline int64) []byte {
	flags := byte(0)
	if deadline != 0 {
		flags |= flagDeadline
	}
	dst = append(dst, envVersion, kindCall, flags, codec)
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendUvarint(dst, uint64(len(replyTo)))
	dst = append(dst, replyTo...)
	dst = binary.AppendUvarint(dst, uint64(len(method)))
	dst = append(dst, method...)
	if deadline != 0 {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(deadline))
	}
	return append(dst, 0) // no capabilities
}

// appendReply appends the envelope of a reply, without its payload. msg is
// cut to maxMessageLen.
func appendReply(dst []byte, codec byte, id uint64, code Code, msg string) []byte {
	if len(msg) > maxMessageLen {
		msg = msg[:maxMessageLen]
	}
	dst = append(dst, envVersion, kindReply, 0, codec)
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendUvarint(dst, uint64(code))
	dst = binary.AppendUvarint(dst, uint64(len(msg)))
	dst = append(dst, msg...)
	return append(dst, 0) // no capabilities
}

// appendCancel appends a complete cancel envelope.
func appendCancel(dst []byte, id uint64, replyTo string) []byte {
	dst = append(dst, envVersion, kindCancel, 0, codecNone)
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendUvarint(dst, uint64(len(replyTo)))
	return append(dst, replyTo...)
}

// appendBatchHeader appends the envelope of a batch of n envelopes; each
// follows as a length-prefixed byte string.
func appendBatchHeader(dst []byte, n int) []byte {
	dst = append(dst, envVersion, kindBatch, 0, codecNone)
	return binary.AppendUvarint(dst, uint64(n))
}
