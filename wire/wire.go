package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// Version is the only frame version this package reads and writes.
const Version = 1

// HeaderSize is the size of a frame header in bytes.
const HeaderSize = 12

// DefaultMaxFrame is the payload limit a Reader applies when none is given.
const DefaultMaxFrame = 16<<20 + 4096

// Type is a frame type.
type Type uint8

// Frame types. SPEC.md gives the payload of each.
const (
	THello    Type = 1  // dialer -> listener: protocol version, node id
	THelloAck Type = 2  // listener -> dialer: node id
	TAttach   Type = 3  // sender -> receiver node: attach to a named endpoint
	TAttached Type = 4  // receiver node -> sender: the endpoint's properties and first credit
	TAttachNo Type = 5  // receiver node -> sender: attach refused, with a code and reason
	TDetach   Type = 6  // either way: an attachment ends
	TData     Type = 7  // sender -> receiver: one or more messages of one attachment
	TAck      Type = 8  // receiver -> sender: messages taken so far and the credit limit
	TPing     Type = 9  // either way: heartbeat request
	TPong     Type = 10 // either way: heartbeat answer
	TClose    Type = 11 // either way: the connection is closing, with a code and reason
	TPool     Type = 12 // sender -> receiver: a shared-memory loan pool, passed as a file
	TLoan     Type = 13 // sender -> receiver: one message that lives in a loan pool
	TRelease  Type = 14 // receiver -> sender: a loaned message was released
)

// String returns the frame type's name as SPEC.md writes it.
func (t Type) String() string {
	switch t {
	case THello:
		return "HELLO"
	case THelloAck:
		return "HELLO_ACK"
	case TAttach:
		return "ATTACH"
	case TAttached:
		return "ATTACHED"
	case TAttachNo:
		return "ATTACH_NO"
	case TDetach:
		return "DETACH"
	case TData:
		return "DATA"
	case TAck:
		return "ACK"
	case TPing:
		return "PING"
	case TPong:
		return "PONG"
	case TClose:
		return "CLOSE"
	case TPool:
		return "POOL"
	case TLoan:
		return "LOAN"
	case TRelease:
		return "RELEASE"
	}
	return fmt.Sprintf("TYPE(%d)", uint8(t))
}

// Frame flags.
const (
	// FlagFiles marks a DATA frame whose one message carries open files
	// passed alongside the frame (SCM_RIGHTS on Unix sockets).
	FlagFiles uint16 = 1 << 0
	// FlagAckNow marks a PING from a sender waiting for acknowledgements
	// (Flush): the receiving side acknowledges what was taken at once, with
	// its PONG and for a short while after, instead of lazily.
	FlagAckNow uint16 = 1 << 1
	// FlagUseMine marks a HELLO_ACK that declines the connection because
	// the accepting node is dialling the dialler at the same moment (or
	// already has a connection it dialled to it) and has the smaller node
	// id: the dialler uses that connection instead, so that two nodes talk
	// over one connection. The acceptor closes this one after sending it.
	FlagUseMine uint16 = 1 << 2
	// FlagCopy marks a LOAN that a plain send made (a large message over
	// shared memory): the receiver copies the bytes out as the frame
	// arrives and releases the range at once, whatever the application does.
	FlagCopy uint16 = 1 << 3
	// FlagSeq marks a DATA frame whose messages have consecutive ids: the
	// payload gives the first id once, and each record is only a length
	// and bytes. A stream from one sender to one receiver travels so.
	FlagSeq uint16 = 1 << 4
	// FlagNoSum on HELLO and HELLO_ACK says that the side sending it is on
	// a local transport (a Unix socket or shared memory) and would rather
	// not checksum frames. When both handshake frames carry it, neither
	// side computes nor checks the CRC of any later frame (see SPEC.md).
	FlagNoSum uint16 = 1 << 5
)

// Errors returned by a Reader. Each is wrapped with detail; match with errors.Is.
var (
	ErrVersion   = errors.New("wire: unsupported frame version")
	ErrChecksum  = errors.New("wire: frame checksum mismatch")
	ErrTooLarge  = errors.New("wire: frame larger than the limit")
	ErrMalformed = errors.New("wire: malformed frame")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Frame is one decoded frame. Payload aliases memory owned by the frame:
// it is never reused by the Reader, so it may be kept.
type Frame struct {
	Type    Type
	Flags   uint16
	Payload []byte
}

// AppendHeader appends a header with a zero length and checksum to b and
// returns the extended slice. Finish the frame with Seal once its payload
// follows the header.
func AppendHeader(b []byte, t Type, flags uint16) []byte {
	return append(b, Version, byte(t), byte(flags), byte(flags>>8), 0, 0, 0, 0, 0, 0, 0, 0)
}

// Seal fills in the length and checksum of the frame that starts at
// b[off:] and runs to the end of b.
func Seal(b []byte, off int) {
	n := len(b) - off - HeaderSize
	binary.LittleEndian.PutUint32(b[off+4:], uint32(n))
	c := crc32.Update(0, castagnoli, b[off:off+8])
	c = crc32.Update(c, castagnoli, b[off+HeaderSize:])
	binary.LittleEndian.PutUint32(b[off+8:], c)
}

// SetLength fills in the length of the frame that starts at b[off:] and
// runs to the end of b, and leaves its checksum zero: Seal for a
// connection that agreed on FlagNoSum.
func SetLength(b []byte, off int) {
	binary.LittleEndian.PutUint32(b[off+4:], uint32(len(b)-off-HeaderSize))
}

// SetLengthSplit is SetLength for a frame kept apart as head and a
// remaining payload of tailLen bytes (see SealSplit).
func SetLengthSplit(head []byte, tailLen int) {
	binary.LittleEndian.PutUint32(head[4:], uint32(len(head)-HeaderSize+tailLen))
}

// SealSplit fills in the length and checksum of a frame whose header and
// first payload bytes are head and whose remaining payload is tail, kept
// apart so that a large payload need not be copied next to its header.
func SealSplit(head, tail []byte) {
	n := len(head) - HeaderSize + len(tail)
	binary.LittleEndian.PutUint32(head[4:], uint32(n))
	c := crc32.Update(0, castagnoli, head[:8])
	c = crc32.Update(c, castagnoli, head[HeaderSize:])
	c = crc32.Update(c, castagnoli, tail)
	binary.LittleEndian.PutUint32(head[8:], c)
}

// copyBlock is how much CopySealed copies before it checksums what it
// copied: well inside a core's cache.
const copyBlock = 32 << 10

// CopySealed copies src into dst (of the same length) and seals the frame
// whose header and leading payload are head and whose payload goes on with
// dst, as copy(dst, src) then SealSplit(head, dst) would; but it checksums
// each block right after copying it, while it is in the CPU's cache. For a
// message of a megabyte, a checksum pass over it afterwards read it from
// memory again and cost four times the pass over cached bytes.
func CopySealed(head, dst, src []byte) {
	n := len(head) - HeaderSize + len(src)
	binary.LittleEndian.PutUint32(head[4:], uint32(n))
	c := crc32.Update(0, castagnoli, head[:8])
	c = crc32.Update(c, castagnoli, head[HeaderSize:])
	for i := 0; i < len(src); i += copyBlock {
		j := min(i+copyBlock, len(src))
		copy(dst[i:j], src[i:j])
		c = crc32.Update(c, castagnoli, dst[i:j])
	}
	binary.LittleEndian.PutUint32(head[8:], c)
}

// AppendFrame appends a whole frame with the given payload to b.
func AppendFrame(b []byte, t Type, flags uint16, payload []byte) []byte {
	off := len(b)
	b = AppendHeader(b, t, flags)
	b = append(b, payload...)
	Seal(b, off)
	return b
}

// Reader reads frames from a byte stream. It is not safe for concurrent use.
//
// Frames returned alias the Reader's buffer, which is never overwritten: it
// reads into chunks, and when one is used up it starts a new one (the old
// one lives as long as something refers to a frame in it). A stream that
// used up a chunk within chunkFast gets a chunk twice as large next time,
// up to MaxChunk; one that took longer than chunkSlow gets one half as
// large, down to MinChunk. Large chunks mean fewer garbage collections in a
// process that receives fast (the chunk being filled is live, and the
// collector paces itself on the live heap): at a few million 64-byte
// messages a second, 4 MiB chunks took 25% less CPU per message than
// 256 KiB ones, and at ten million, 16 MiB ones 10-20% less again than
// 4 MiB ones (BENCHMARKS.md). Only a stream that fills a chunk within
// chunkFast grows to them.
type Reader struct {
	r     io.Reader
	max   int
	chunk int       // size of the next chunk
	born  time.Time // when buf was allocated
	buf   []byte    // buf[start:end] holds unread bytes
	start int
	end   int
	nosum bool // SkipChecksums was called
}

// Chunk sizes of a Reader (see Reader).
const (
	MinChunk  = 256 << 10
	MaxChunk  = 16 << 20
	chunkFast = 20 * time.Millisecond
	chunkSlow = time.Second
)

// NewReader returns a Reader on r that refuses frames whose payload is larger
// than maxPayload (DefaultMaxFrame when maxPayload <= 0).
func NewReader(r io.Reader, maxPayload int) *Reader {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxFrame
	}
	return &Reader{r: r, max: maxPayload, chunk: MinChunk}
}

// Buffered reports how many bytes have been read from the stream but not yet
// returned in a frame.
func (r *Reader) Buffered() int { return r.end - r.start }

// Ready reports whether a whole frame is buffered, so that Next returns it
// (or its error) without reading from the stream.
func (r *Reader) Ready() bool {
	if r.end-r.start < HeaderSize {
		return false
	}
	n := binary.LittleEndian.Uint32(r.buf[r.start+4:])
	return uint64(n) > uint64(r.max) || r.end-r.start-HeaderSize >= int(n)
}

// Reset makes r read from src with a new payload limit, keeping the bytes
// already buffered: a stream read first by one Reader (a handshake, say)
// goes on in this one without losing what was read ahead.
func (r *Reader) Reset(src io.Reader, maxPayload int) {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxFrame
	}
	r.r, r.max = src, maxPayload
}

// SkipChecksums makes r stop computing and checking the CRC of the frames
// it reads from now on (a connection that agreed on FlagNoSum). Lengths
// and everything else are checked as before.
func (r *Reader) SkipChecksums() { r.nosum = true }

// Next reads the next frame. A returned error other than io.EOF means the
// stream is corrupt or broken and must be closed. An error from the
// underlying stream that leaves it usable (a read deadline, say) leaves r
// usable too: the bytes read so far stay buffered and Next may be called
// again.
func (r *Reader) Next() (Frame, error) {
	if err := r.fill(HeaderSize, nil); err != nil {
		return Frame{}, err
	}
	h := r.buf[r.start : r.start+HeaderSize]
	if h[0] != Version {
		return Frame{}, fmt.Errorf("%w: got %d, want %d", ErrVersion, h[0], Version)
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if uint64(n) > uint64(r.max) {
		return Frame{}, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrTooLarge, Type(h[1]), n, r.max)
	}
	// A frame yet to arrive is checksummed piece by piece as it lands,
	// while the CPU's cache holds it: for a frame of a megabyte a pass
	// over it afterwards read it from memory again.
	var c uint32
	need, summed := HeaderSize+int(n), 0 // summed: payload bytes folded into c
	var sum func()
	if !r.nosum {
		c = crc32.Update(0, castagnoli, h[:8])
		sum = func() {
			if e := min(r.end-r.start, need) - HeaderSize; e > summed {
				c = crc32.Update(c, castagnoli, r.buf[r.start+HeaderSize+summed:r.start+HeaderSize+e])
				summed = e
			}
		}
	}
	if err := r.fill(need, sum); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	h = r.buf[r.start : r.start+HeaderSize]
	p := r.buf[r.start+HeaderSize : r.start+HeaderSize+int(n) : r.start+HeaderSize+int(n)]
	if !r.nosum {
		c = crc32.Update(c, castagnoli, p[summed:])
		if want := binary.LittleEndian.Uint32(h[8:]); c != want {
			return Frame{}, fmt.Errorf("%w: %s frame of %d bytes", ErrChecksum, Type(h[1]), n)
		}
	}
	f := Frame{Type: Type(h[1]), Flags: binary.LittleEndian.Uint16(h[2:]), Payload: p}
	r.start += HeaderSize + int(n)
	return f, nil
}

// fill makes sure at least n unread bytes are buffered, calling read (if
// not nil) after each read from the stream. Bytes already handed out in
// frames are never overwritten: when the buffer runs out, a new one is
// allocated and the unread tail copied over.
func (r *Reader) fill(n int, read func()) error {
	if r.end-r.start >= n {
		return nil
	}
	r.reserve(n)
	for r.end-r.start < n {
		m, err := r.r.Read(r.buf[r.end:])
		r.end += m
		if read != nil && m > 0 {
			read()
		}
		if r.end-r.start >= n {
			return nil
		}
		if err != nil {
			if err == io.EOF && r.end > r.start {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if m == 0 {
			return io.ErrNoProgress
		}
	}
	return nil
}

// reserve makes room in the buffer for n unread bytes from r.start, in a
// new chunk if needed (the unread tail copied over).
func (r *Reader) reserve(n int) {
	if len(r.buf)-r.start < n {
		now := time.Now()
		if r.buf != nil {
			switch age := now.Sub(r.born); {
			case age < chunkFast && r.chunk < MaxChunk:
				r.chunk *= 2
			case age > chunkSlow && r.chunk > MinChunk:
				r.chunk /= 2
			}
		}
		size := r.chunk
		if n > size {
			size = n
		}
		nb := Alloc(size) // not zeroed: reads fill it before Next hands a byte out
		copy(nb, r.buf[r.start:r.end])
		r.end -= r.start
		r.start = 0
		r.buf, r.born = nb, now
	}
}
