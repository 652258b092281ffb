package wire

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"testing"
	"testing/iotest"
	"time"
)

func TestRoundTrip(t *testing.T) {
	var b []byte
	b = AppendFrame(b, THello, 0, []byte("hi"))
	off := len(b)
	b = AppendHeader(b, TData, FlagFiles)
	b = append(b, bytes.Repeat([]byte{7}, 100000)...)
	Seal(b, off)
	b = AppendFrame(b, TPing, 0, nil)
	r := NewReader(iotest.OneByteReader(bytes.NewReader(b)), 0)
	want := []struct {
		t Type
		n int
		f uint16
	}{{THello, 2, 0}, {TData, 100000, FlagFiles}, {TPing, 0, 0}}
	for _, w := range want {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != w.t || len(f.Payload) != w.n || f.Flags != w.f {
			t.Fatalf("got %s/%d/%d want %s/%d/%d", f.Type, len(f.Payload), f.Flags, w.t, w.n, w.f)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestPayloadNotReused(t *testing.T) {
	var b []byte
	for i := 0; i < 1000; i++ {
		b = AppendFrame(b, TData, 0, bytes.Repeat([]byte{byte(i)}, 1000))
	}
	r := NewReader(bytes.NewReader(b), 0)
	var kept [][]byte
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, f.Payload)
	}
	for i, p := range kept {
		if p[0] != byte(i) || p[999] != byte(i) {
			t.Fatalf("payload %d was overwritten", i)
		}
	}
}

func TestErrors(t *testing.T) {
	good := AppendFrame(nil, TAttach, 0, []byte("payload"))
	mut := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"version", mut(func(b []byte) { b[0] = 9 }), ErrVersion},
		{"checksum", mut(func(b []byte) { b[HeaderSize] ^= 1 }), ErrChecksum},
		{"flags covered by checksum", mut(func(b []byte) { b[2] ^= 1 }), ErrChecksum},
		{"too large", mut(func(b []byte) { b[7] = 0x7f }), ErrTooLarge},
		{"truncated", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"truncated header", good[:5], io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		_, err := NewReader(bytes.NewReader(c.in), 1024).Next()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestDecoder(t *testing.T) {
	p := AppendUvarint(nil, 300)
	p = AppendString(p, "name")
	p = AppendBytes(p, []byte{1, 2, 3})
	d := NewDecoder(p)
	if d.Uvarint() != 300 || d.String(10) != "name" || !bytes.Equal(d.Bytes(10), []byte{1, 2, 3}) || d.End() != nil {
		t.Fatal("round trip failed")
	}
	d = NewDecoder(AppendString(nil, "toolong"))
	if d.String(3); !errors.Is(d.Err(), ErrMalformed) {
		t.Fatal("limit not enforced")
	}
	d = NewDecoder([]byte{0x80})
	if d.Uvarint(); !errors.Is(d.Err(), ErrMalformed) {
		t.Fatal("truncated varint accepted")
	}
	d = NewDecoder([]byte{1, 2})
	d.Raw(1)
	if !errors.Is(d.End(), ErrMalformed) {
		t.Fatal("trailing bytes accepted")
	}
}

// FuzzReader feeds arbitrary streams, in pieces of arbitrary size, to a
// Reader, half of them (piece >= 128) one that skips checksums. It must
// never panic nor return a frame above the limit, and any frame it returns
// must re-encode to a frame that decodes.
func FuzzReader(f *testing.F) {
	f.Add(AppendFrame(nil, THello, 0, []byte("x")), uint8(1))
	f.Add(append(AppendFrame(nil, TData, 0, bytes.Repeat([]byte{1}, 300)), AppendFrame(nil, TAck, 0, []byte{1, 2, 3})...), uint8(7))
	f.Add([]byte{1, 7, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}, uint8(3))
	f.Add([]byte("garbage that is not a frame at all"), uint8(2))
	f.Add(func() []byte { b := append(AppendHeader(nil, TData, 1), "no sum"...); SetLength(b, 0); return b }(), uint8(0x85))
	f.Fuzz(func(t *testing.T, in []byte, piece uint8) {
		const limit = 4096
		var src io.Reader = bytes.NewReader(in)
		if piece > 0 {
			src = &chunkReader{b: in, n: int(piece)}
		}
		r := NewReader(src, limit)
		if piece&0x80 != 0 {
			r.SkipChecksums()
		}
		for i := 0; i < 1000; i++ {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if len(fr.Payload) > limit {
				t.Fatalf("frame of %d bytes above the %d limit", len(fr.Payload), limit)
			}
			again := AppendFrame(nil, fr.Type, fr.Flags, fr.Payload)
			if _, err := NewReader(bytes.NewReader(again), limit).Next(); err != nil {
				t.Fatalf("re-encoded frame does not decode: %v", err)
			}
		}
	})
}

// FuzzDecoder reads fields of every kind from arbitrary bytes.
func FuzzDecoder(f *testing.F) {
	f.Add(AppendString(AppendUvarint(nil, 5), "abc"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		d := NewDecoder(in)
		for d.Err() == nil && d.Len() > 0 {
			d.Uvarint()
			d.Bytes(64)
			d.String(16)
			d.Raw(2)
		}
		d.End()
	})
}

type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(c.n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// flakyReader returns errTemporary every other call, like a read deadline
// interrupting a stream that goes on afterwards.
type flakyReader struct {
	r    io.Reader
	fail bool
}

var errTemporary = errors.New("interrupted")

func (f *flakyReader) Read(p []byte) (int, error) {
	f.fail = !f.fail
	if f.fail {
		return 0, errTemporary
	}
	return f.r.Read(p)
}

// TestResumeAndReady: an interrupted read loses nothing (Next can be called
// again), Ready says whether Next needs the stream, and Reset keeps what is
// buffered.
func TestResumeAndReady(t *testing.T) {
	var b []byte
	for i := 0; i < 50; i++ {
		b = AppendFrame(b, TData, 0, bytes.Repeat([]byte{byte(i)}, i*37))
	}
	r := NewReader(&flakyReader{r: iotest.HalfReader(bytes.NewReader(b[:len(b)/2]))}, 0)
	got := 0
	readAll := func() {
		for {
			f, err := r.Next()
			if errors.Is(err, errTemporary) {
				continue
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Payload) != got*37 || (got > 0 && f.Payload[0] != byte(got)) {
				t.Fatalf("frame %d: %d bytes", got, len(f.Payload))
			}
			got++
		}
	}
	readAll()
	if r.Ready() {
		t.Fatal("Ready with a partial frame buffered")
	}
	partial := r.Buffered()
	// The rest of the stream comes from another source: Reset keeps the
	// partial frame.
	r.Reset(bytes.NewReader(b[len(b)/2:]), 0)
	if r.Buffered() != partial {
		t.Fatalf("Reset dropped buffered bytes: %d, had %d", r.Buffered(), partial)
	}
	readAll()
	if got != 50 {
		t.Fatalf("read %d frames, want 50", got)
	}
	// Ready reports a whole buffered frame without reading.
	r = NewReader(bytes.NewReader(AppendFrame(AppendFrame(nil, TPing, 0, nil), TPong, 0, nil)), 0)
	if r.Ready() {
		t.Fatal("Ready before anything was read")
	}
	if f, err := r.Next(); err != nil || f.Type != TPing {
		t.Fatal(f.Type, err)
	}
	if !r.Ready() {
		t.Fatal("not Ready with a whole frame buffered")
	}
}

// TestReaderChunks: a stream read fast gets ever larger chunks, up to
// MaxChunk; a slow one smaller ones, down to MinChunk; no payload handed
// out is overwritten on the way.
func TestReaderChunks(t *testing.T) {
	const n = 80000
	var b []byte
	for i := 0; i < n; i++ {
		b = AppendFrame(b, TData, 0, bytes.Repeat([]byte{byte(i)}, 1000))
	}
	r := NewReader(bytes.NewReader(b), 0)
	var kept [][]byte
	for i := 0; i < n; i++ {
		if i <= n/2 {
			r.born = time.Now() // a fast stream, however slow the test runs
		}
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, f.Payload)
		if i == n/2 && r.chunk != MaxChunk {
			t.Fatalf("after %d MB read at once the next chunk is %d bytes, want %d", n/2/1000, r.chunk, MaxChunk)
		}
		if i > n/2 {
			r.born = r.born.Add(-2 * chunkSlow) // a slow stream from here on
		}
	}
	if r.chunk != MinChunk {
		t.Fatalf("after a slow stream the next chunk is %d bytes, want %d", r.chunk, MinChunk)
	}
	for i, p := range kept {
		if p[0] != byte(i) || p[999] != byte(i) {
			t.Fatalf("payload %d was overwritten", i)
		}
	}
}

// TestCopySealed: CopySealed copies and seals as copy then SealSplit do,
// for payloads around and across its block size.
func TestCopySealed(t *testing.T) {
	for _, n := range []int{0, 1, copyBlock - 1, copyBlock, copyBlock + 1, 3*copyBlock + 17} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*7 + n)
		}
		head := AppendHeader(nil, TData, 0)
		head = append(head, 1, 2, 3)
		want := append([]byte(nil), head...)
		SealSplit(want, src)
		dst := make([]byte, n)
		CopySealed(head, dst, src)
		if !bytes.Equal(head, want) || !bytes.Equal(dst, src) {
			t.Fatalf("%d bytes: header %x, want %x; copy equal: %v", n, head, want, bytes.Equal(dst, src))
		}
		f, err := NewReader(bytes.NewReader(append(head, dst...)), 1<<20).Next()
		if err != nil || len(f.Payload) != 3+n {
			t.Fatalf("%d bytes: the sealed frame reads back as %d bytes, %v", n, len(f.Payload), err)
		}
	}
}

// TestBigFramesInPieces: frames larger than one read arrive in pieces,
// with interruptions between them; each is checksummed as its pieces land,
// and a byte changed anywhere in a payload (first, middle, last, or in a
// piece read after an interruption) is still caught.
func TestBigFramesInPieces(t *testing.T) {
	sizes := []int{300 << 10, 1<<20 + 5, 70000, 0, 4<<20 + 1}
	var b []byte
	var ends []int // payload [start, end) of each frame in b
	for i, n := range sizes {
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(i*7 + j)
		}
		b = AppendFrame(b, TData, 0, p)
		ends = append(ends, len(b))
	}
	read := func(stream []byte) (int, error) {
		r := NewReader(&flakyReader{r: &chunkReader{b: stream, n: 64 << 10}}, 8<<20)
		for got := 0; ; {
			f, err := r.Next()
			if errors.Is(err, errTemporary) {
				continue
			}
			if err == io.EOF {
				return got, nil
			}
			if err != nil {
				return got, err
			}
			if len(f.Payload) != sizes[got] || (len(f.Payload) > 0 && f.Payload[len(f.Payload)-1] != byte(got*7+len(f.Payload)-1)) {
				t.Fatalf("frame %d: %d bytes, want %d", got, len(f.Payload), sizes[got])
			}
			got++
		}
	}
	if got, err := read(b); err != nil || got != len(sizes) {
		t.Fatalf("read %d frames, %v", got, err)
	}
	for _, at := range []int{ends[0] - sizes[0], ends[1] - sizes[1]/2, ends[1] - 1, ends[4] - 3} {
		bad := bytes.Clone(b)
		bad[at] ^= 0x40
		if _, err := read(bad); !errors.Is(err, ErrChecksum) {
			t.Errorf("byte %d changed: %v, want ErrChecksum", at, err)
		}
	}
}

func TestAlloc(t *testing.T) {
	for _, n := range []int{0, 1, 7, 4096, 1 << 20, 4<<20 + 3} {
		b := Alloc(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("Alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		for i := range b {
			b[i] = byte(i)
		}
		for i := range b {
			if b[i] != byte(i) {
				t.Fatalf("Alloc(%d): byte %d reads %d", n, i, b[i])
			}
		}
	}
	// Two buffers never overlap.
	a, b := Alloc(64), Alloc(64)
	for i := range a {
		a[i] = 1
	}
	for i := range b {
		b[i] = 2
	}
	for i := range a {
		if a[i] != 1 {
			t.Fatal("buffers overlap")
		}
	}
}

func BenchmarkAlloc(b *testing.B) {
	for _, n := range []int{4 << 10, 1 << 20} {
		b.Run(strconv.Itoa(n)+"/make", func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				sink = make([]byte, n)
			}
		})
		b.Run(strconv.Itoa(n)+"/Alloc", func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				sink = Alloc(n)
			}
		})
	}
}

var sink []byte

// TestSkipChecksums: a frame whose checksum is zero (SetLength) is refused
// by a Reader that checks checksums and read by one that skips them, which
// still refuses a frame above its limit.
func TestSkipChecksums(t *testing.T) {
	b := append(AppendHeader(nil, TData, 0), "payload"...)
	SetLength(b, 0)
	if _, err := NewReader(bytes.NewReader(b), 64).Next(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("checked: %v, want ErrChecksum", err)
	}
	r := NewReader(bytes.NewReader(b), 64)
	r.SkipChecksums()
	f, err := r.Next()
	if err != nil || string(f.Payload) != "payload" {
		t.Fatalf("skipped: %q %v", f.Payload, err)
	}
	head := AppendHeader(nil, TData, 0)
	SetLengthSplit(head, 100)
	r = NewReader(bytes.NewReader(append(head, make([]byte, 100)...)), 64)
	r.SkipChecksums()
	if _, err := r.Next(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("large: %v, want ErrTooLarge", err)
	}
}
