package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// rawBatch is the number of messages per write in "raw-batched".
const rawBatch = 256

// rawTransports are the transports of the raw baselines.
var rawTransports = []string{"pipe", "unix", "tcp"}

// The built-in cases are registered in one place so that their order (which
// is the table's order) is raw first, then raw-batched, then go-chan.
func init() {
	for _, tr := range rawTransports {
		Register(
			Case{System: "raw", Transport: tr, Pattern: "oneway", Mode: "blocking", Run: rawOneway(tr, 1)},
			// Batching 256 messages of 1 MiB makes no sense; stop at 64 KiB.
			Case{System: "raw-batched", Transport: tr, Pattern: "oneway", Mode: "blocking", MaxSize: 64 << 10, Run: rawOneway(tr, rawBatch)},
			Case{System: "raw", Transport: tr, Pattern: "pingpong", Mode: "blocking", Run: rawPingPong(tr)},
			Case{System: "raw", Transport: tr, Pattern: "pingpong-1k", Mode: "blocking", Size: 64, Rate: 1000, Run: rawPingPong(tr)},
		)
	}
	Register(
		Case{System: "go-chan", Transport: "inproc", Pattern: "oneway", Mode: "blocking", Run: chanOneway},
		Case{System: "go-chan", Transport: "inproc", Pattern: "pingpong", Mode: "blocking", Run: chanPingPong},
	)
	RegisterRole("raw-recv", rawRecvRole)
	RegisterRole("raw-echo", rawEchoRole)
}

// ioLimit is how long a single raw I/O may block before it fails: the
// harness kills children long before, this is a last resort.
func ioLimit(env Env) time.Time { return time.Now().Add(10*env.Budget + 10*time.Second) }

// rawOneway returns the Run function of a raw one-way case: the parent sends
// length-prefixed messages, batch per write, for the budget; the child
// receives and counts them.
func rawOneway(transport string, batch int) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		var ch *Child
		var w io.Writer
		var closeW func() error
		switch transport {
		case "pipe":
			r, pw, err := os.Pipe()
			if err != nil {
				return Result{}, err
			}
			defer pw.Close()
			ch, err = env.SpawnFiles(ctx, "raw-recv", []*os.File{r}, "pipe", "-", strconv.Itoa(env.Size))
			r.Close()
			if err != nil {
				return Result{}, err
			}
			if _, err := ch.Expect(ctx, "ready"); err != nil {
				return Result{}, err
			}
			pw.SetWriteDeadline(ioLimit(env))
			w, closeW = pw, pw.Close
		default:
			conn, c, err := dialChild(ctx, env, "raw-recv", transport)
			if err != nil {
				return Result{}, err
			}
			defer conn.Close()
			conn.SetDeadline(ioLimit(env))
			ch, w, closeW = c, conn, conn.Close
		}
		sent, err := sendFrames(ctx, w, env.Size, batch, env.Budget)
		if err != nil {
			return Result{}, fmt.Errorf("sending: %w", err)
		}
		if err := closeW(); err != nil {
			return Result{}, err
		}
		f, err := ch.Expect(ctx, "done")
		if err != nil {
			return Result{}, err
		}
		return receiverResult(f, sent)
	}
}

// receiverResult turns the receiver's "done <msgs> <elapsed-ns>" into a Result.
func receiverResult(f []string, sent int64) (Result, error) {
	if len(f) != 2 {
		return Result{}, fmt.Errorf("bad done line %q", f)
	}
	n, err1 := strconv.ParseInt(f[0], 10, 64)
	ns, err2 := strconv.ParseInt(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Result{}, fmt.Errorf("bad done line %q: %w", f, err)
	}
	if n != sent {
		return Result{}, fmt.Errorf("receiver counted %d messages, sender sent %d", n, sent)
	}
	if n < 2 || ns <= 0 {
		return Result{}, fmt.Errorf("too few messages to time (%d in %d ns)", n, ns)
	}
	// The clock starts when the first message has arrived: n-1 intervals.
	return Result{Msgs: n, MsgsPerS: float64(n-1) / (float64(ns) / 1e9)}, nil
}

// dialChild spawns role listening on transport, waits for its address and
// connects to it.
func dialChild(ctx context.Context, env Env, role, transport string) (net.Conn, *Child, error) {
	var addr string
	switch transport {
	case "unix":
		dir, err := os.MkdirTemp("", "loft-bench-")
		if err != nil {
			return nil, nil, err
		}
		// The child has bound (and so no longer needs) the path by the time
		// it says ready; the directory goes at once.
		defer os.RemoveAll(dir)
		addr = filepath.Join(dir, "s")
	case "tcp":
		addr = "127.0.0.1:0"
	default:
		return nil, nil, fmt.Errorf("unknown transport %q", transport)
	}
	ch, err := env.Spawn(ctx, role, transport, addr, strconv.Itoa(env.Size))
	if err != nil {
		return nil, nil, err
	}
	f, err := ch.Expect(ctx, "ready")
	if err != nil {
		return nil, nil, err
	}
	if len(f) != 1 {
		return nil, nil, fmt.Errorf("bad ready line %q", f)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, transport, f[0])
	if err != nil {
		return nil, nil, err
	}
	return conn, ch, nil
}

// sendFrames writes frames (4-byte little-endian length, then the payload,
// whose first 8 bytes are a sequence number) to w, batch frames per write,
// for about budget. It returns the number of messages written.
func sendFrames(ctx context.Context, w io.Writer, size, batch int, budget time.Duration) (int64, error) {
	frame := 4 + size
	buf := make([]byte, frame*batch)
	for i := range batch {
		binary.LittleEndian.PutUint32(buf[i*frame:], uint32(size))
		for j := 4; j < frame; j++ {
			buf[i*frame+j] = byte(j)
		}
	}
	var seq uint64
	start := time.Now()
	for {
		if size >= 8 {
			for i := range batch {
				binary.LittleEndian.PutUint64(buf[i*frame+4:], seq+uint64(i))
			}
		}
		if _, err := w.Write(buf); err != nil {
			return int64(seq), err
		}
		seq += uint64(batch)
		if time.Since(start) >= budget || seq >= 1<<40 {
			return int64(seq), nil
		}
		if seq%1024 < uint64(batch) && ctx.Err() != nil {
			return int64(seq), context.Cause(ctx)
		}
	}
}

// recvFrames reads frames written by sendFrames until EOF, copying every
// payload out and checking sizes and sequence numbers. It returns the count
// and the time from the first message to EOF. Frames that fit the bufio
// buffer are parsed in place, as many as are buffered at a time; larger ones
// are read straight into the message buffer.
func recvFrames(r io.Reader, size int) (int64, time.Duration, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	frame := 4 + size
	small := frame <= br.Size()
	msg := make([]byte, size)
	var n int64
	var first time.Time
	check := func(hdr []byte) error {
		if ln := binary.LittleEndian.Uint32(hdr); ln != uint32(size) {
			return fmt.Errorf("message %d: length %d, want %d", n, ln, size)
		}
		return nil
	}
	for {
		need := 4
		if small {
			need = frame
		}
		hdr, err := br.Peek(need) // blocks until a frame (or header) is buffered
		if err != nil {
			if err == io.EOF && len(hdr) == 0 {
				break
			}
			return n, 0, fmt.Errorf("message %d: %w", n, noEOF(err))
		}
		if n == 0 {
			first = time.Now()
		}
		if !small {
			if err := check(hdr); err != nil {
				return n, 0, err
			}
			br.Discard(4)
			if _, err := io.ReadFull(br, msg); err != nil {
				return n, 0, fmt.Errorf("message %d: %w", n, noEOF(err))
			}
			if size >= 8 && binary.LittleEndian.Uint64(msg) != uint64(n) {
				return n, 0, fmt.Errorf("message %d: sequence number %d", n, binary.LittleEndian.Uint64(msg))
			}
			n++
			continue
		}
		buf, _ := br.Peek(br.Buffered())
		k := 0
		for ; k+frame <= len(buf); k += frame {
			if binary.LittleEndian.Uint32(buf[k:]) != uint32(size) {
				return n, 0, check(buf[k:])
			}
			copy(msg, buf[k+4:k+frame])
			if size >= 8 && binary.LittleEndian.Uint64(msg) != uint64(n) {
				return n, 0, fmt.Errorf("message %d: sequence number %d", n, binary.LittleEndian.Uint64(msg))
			}
			n++
		}
		br.Discard(k)
	}
	if n == 0 {
		return 0, 0, nil
	}
	return n, time.Since(first), nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// rawRecvRole is the receiving child of the raw one-way cases.
// Args: transport, address ("-" for a pipe on descriptor 3), size.
func rawRecvRole(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("want transport, address, size; got %q", args)
	}
	size, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	var r io.Reader
	if args[0] == "pipe" {
		f := InheritedFile(0, "pipe")
		defer f.Close()
		if err := ToParent("ready -"); err != nil {
			return err
		}
		r = f
	} else {
		conn, err := acceptOne(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		defer conn.Close()
		r = conn
	}
	n, el, err := recvFrames(r, size)
	if err != nil {
		return err
	}
	return ToParent("done %d %d", n, el.Nanoseconds())
}

// rawEchoRole is the echoing child of the raw ping-pong cases.
// Args: transport, address ("-" for pipes on descriptors 3 (in) and 4 (out)), size.
func rawEchoRole(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("want transport, address, size; got %q", args)
	}
	size, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	var r io.Reader
	var w io.Writer
	if args[0] == "pipe" {
		in, out := InheritedFile(0, "in"), InheritedFile(1, "out")
		defer in.Close()
		defer out.Close()
		if err := ToParent("ready -"); err != nil {
			return err
		}
		r, w = in, out
	} else {
		conn, err := acceptOne(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		defer conn.Close()
		r, w = conn, conn
	}
	return echo(r, w, size)
}

// echo reads messages of size bytes from r and writes each back to w, until
// r ends (nil) or fails.
func echo(r io.Reader, w io.Writer, size int) error {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
}

// acceptOne listens on address, tells the parent the address it listens on
// ("ready <addr>"), and accepts one connection.
func acceptOne(ctx context.Context, transport, address string) (net.Conn, error) {
	ln, err := net.Listen(transport, address)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	if err := ToParent("ready %s", ln.Addr()); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	conn, err := ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("accept: %w (%v)", err, context.Cause(ctx))
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	return conn, nil
}

// rawPingPong returns the Run function of a raw ping-pong case.
func rawPingPong(transport string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		var r io.Reader
		var w io.Writer
		switch transport {
		case "pipe":
			cr, pw, err := os.Pipe() // parent to child
			if err != nil {
				return Result{}, err
			}
			defer pw.Close()
			pr, cw, err := os.Pipe() // child to parent
			if err != nil {
				cr.Close()
				return Result{}, err
			}
			defer pr.Close()
			ch, err := env.SpawnFiles(ctx, "raw-echo", []*os.File{cr, cw}, "pipe", "-", strconv.Itoa(env.Size))
			cr.Close()
			cw.Close()
			if err != nil {
				return Result{}, err
			}
			if _, err := ch.Expect(ctx, "ready"); err != nil {
				return Result{}, err
			}
			pw.SetWriteDeadline(ioLimit(env))
			pr.SetReadDeadline(ioLimit(env))
			r, w = pr, pw
		default:
			conn, _, err := dialChild(ctx, env, "raw-echo", transport)
			if err != nil {
				return Result{}, err
			}
			defer conn.Close()
			conn.SetDeadline(ioLimit(env))
			r, w = conn, conn
		}
		out := make([]byte, env.Size)
		for i := range out {
			out[i] = byte(i)
		}
		in := make([]byte, env.Size)
		var seq uint64
		return MeasureRoundTripsAt(ctx, env.Budget, env.Rate, func() error {
			if env.Size >= 8 {
				binary.LittleEndian.PutUint64(out, seq)
			}
			if _, err := w.Write(out); err != nil {
				return err
			}
			if _, err := io.ReadFull(r, in); err != nil {
				return noEOF(err)
			}
			if env.Size >= 8 && binary.LittleEndian.Uint64(in) != seq {
				return fmt.Errorf("echo carries sequence number %d, want %d", binary.LittleEndian.Uint64(in), seq)
			}
			seq++
			return nil
		})
	}
}
