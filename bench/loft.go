package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/loft-ipc/loft"
)

// loft's own cases: the same one-way and ping-pong patterns as the raw
// baselines, through loft channels, each side in its own process.

func init() {
	RegisterRole("loft-recv", loftRecvRole)
	RegisterRole("loft-echo", loftEchoRole)
	RegisterRole("loft-loan-recv", loftLoanRecvRole)
	RegisterRole("loft-recv-batch", loftRecvBatchRole)
	for _, tr := range []string{"shm", "unix"} {
		c := Case{System: "loft-batched", Transport: tr, Pattern: "oneway", Mode: "blocking", MaxSize: 64 << 10, Run: loftBatchOneway(tr)}
		if tr == "shm" {
			c.RawTransport = "unix"
		}
		Register(c)
	}
	for _, tr := range []string{"shm", "unix"} {
		for _, size := range []int{1 << 20, 16 << 20} {
			Register(Case{System: "loft-loan", Transport: tr, Pattern: "oneway", Mode: "blocking", Size: size, RawTransport: "unix", Run: loftLoanOneway(tr)})
		}
	}
	for _, tr := range []string{"unix", "tcp", "shm", "shm-poll"} {
		c := Case{System: "loft", Transport: tr, Mode: "blocking"}
		if tr == "shm-poll" {
			c.Transport, c.Mode, c.Pin = "shm", "polling", true
		}
		if c.Transport == "shm" {
			c.RawTransport = "unix"
		}
		ow, pp, slow := c, c, c
		ow.Pattern, ow.Run = "oneway", loftOneway(tr)
		pp.Pattern, pp.Run = "pingpong", loftPingPong(tr)
		slow.Pattern, slow.Size, slow.Rate, slow.Run = "pingpong-1k", 64, 1000, loftPingPong(tr)
		Register(ow, pp, slow)
	}
}

// loftDir makes a private runtime directory for one case.
func loftDir() (string, func(), error) {
	d, err := os.MkdirTemp("", "loft-bench-")
	if err != nil {
		return "", nil, err
	}
	return filepath.Join(d, "rt"), func() { os.RemoveAll(d) }, nil
}

func loftNode(ctx context.Context, dir, transport string) (*loft.Node, error) {
	opts := loft.Options{Dir: dir}
	switch transport {
	case "tcp":
		opts.ListenTCP = "127.0.0.1:0"
		opts.NoSharedMemory = true
	case "unix":
		opts.NoSharedMemory = true
	case "shm-poll":
		opts.BusyPoll = true
	}
	return loft.Open(ctx, opts)
}

// tcpAddr returns the node's TCP address, or "".
func tcpAddr(n *loft.Node) string {
	for _, a := range n.Addrs() {
		if strings.HasPrefix(a, "tcp://") {
			return a
		}
	}
	return ""
}

// target is what a sender dials: a bare name (found through the name
// service, which picks the same-host transport) or an explicit TCP URL.
func target(transport, addr, name string) string {
	if transport == "tcp" {
		return addr + "/" + name
	}
	return name
}

func waitAttached(ctx context.Context, s *loft.Sender) error {
	for s.Stats().Receivers == 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// receiveRole is a one-way receiver child: args dir transport size. It
// receives on "bench" until an empty message, calls take on each message
// (count is its index), then reports the count and the time from the first
// message to the last.
func receiveRole(ctx context.Context, args []string, capacity func(size int) int, take func(m loft.Message, count int64) error) error {
	return receiveBatches(ctx, args, capacity, 0, take)
}

// receiveBatches is receiveRole taking up to batch messages at a time with
// RecvBatch (batch > 0), or one at a time with Recv.
func receiveBatches(ctx context.Context, args []string, capacity func(size int) int, batch int, take func(m loft.Message, count int64) error) error {
	dir, transport := args[0], args[1]
	size, _ := strconv.Atoi(args[2])
	n, err := loftNode(ctx, dir, transport)
	if err != nil {
		return err
	}
	defer n.Close()
	r, err := n.Receive(ctx, "bench", loft.ChannelOptions{Capacity: capacity(size)})
	if err != nil {
		return err
	}
	if err := ToParent("ready %s", tcpAddr(n)+" "); err != nil {
		return err
	}
	var count int64
	var first time.Time
	var cpu0 time.Duration
	var mallocs0 uint64
	ms := make([]loft.Message, max(batch, 1))
recv:
	for {
		n := 1
		var err error
		if batch > 0 {
			n, err = r.RecvBatch(ctx, ms)
		} else {
			ms[0], err = r.Recv(ctx)
		}
		if err != nil {
			return err
		}
		for _, m := range ms[:n] {
			if len(m.Data) == 0 {
				break recv
			}
			if count == 0 {
				cpu0, mallocs0 = procCPU(), mallocs()
				first = time.Now()
			}
			if err := take(m, count); err != nil {
				return err
			}
			count++
		}
	}
	el := time.Since(first)
	return ToParent("done %d %d %d %d", count, el.Nanoseconds(), (procCPU() - cpu0).Nanoseconds(), mallocs()-mallocs0)
}

// loftRecvRole copies every payload out and checks its sequence number.
func loftRecvRole(ctx context.Context, args []string) error {
	return receiveBatches(ctx, args, capacityFor, 0, copyOut())
}

// loftRecvBatchRole is loftRecvRole taking messages with RecvBatch.
func loftRecvBatchRole(ctx context.Context, args []string) error {
	return receiveBatches(ctx, args, capacityFor, loftBatch, copyOut())
}

// copyOut returns a take function that copies every payload out and
// checks its sequence number.
func copyOut() func(m loft.Message, count int64) error {
	var buf []byte
	return func(m loft.Message, count int64) error {
		buf = append(buf[:0], m.Data...)
		if len(buf) >= 8 && binary.LittleEndian.Uint64(buf) != uint64(count) {
			return fmt.Errorf("message %d carries sequence %d", count, binary.LittleEndian.Uint64(buf))
		}
		return nil
	}
}

// loftBatch is the number of messages per SendBatch and RecvBatch in
// "loft-batched", about as in "raw-batched" (rawBatch per write).
const loftBatch = 256

// loftBatchOneway sends with SendBatch, loftBatch messages at a time, to a
// receiver taking them with RecvBatch.
func loftBatchOneway(transport string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		return oneway(ctx, env, "loft-recv-batch", transport, func(s *loft.Sender) (int64, error) {
			msgs := make([][]byte, loftBatch)
			for i := range msgs {
				msgs[i] = make([]byte, env.Size)
				for j := range msgs[i] {
					msgs[i][j] = byte(j)
				}
			}
			var sent int64
			start := time.Now()
			for time.Since(start) < env.Budget {
				for i, m := range msgs {
					if env.Size >= 8 {
						binary.LittleEndian.PutUint64(m, uint64(sent)+uint64(i))
					}
				}
				n, err := s.SendBatch(ctx, msgs)
				sent += int64(n)
				if err != nil {
					return sent, err
				}
			}
			return sent, nil
		})
	}
}

// capacityFor keeps about 4 MiB in flight per channel.
func capacityFor(size int) int {
	c := (4 << 20) / max(size, 64)
	return max(4, min(c, 65536))
}

// oneway runs a one-way case: a receiver child of role, a sender here that
// calls send for about the budget (it returns how many it sent), then an
// empty message to end, and the child's count and time.
func oneway(ctx context.Context, env Env, role, transport string, send func(s *loft.Sender) (int64, error)) (Result, error) {
	dir, cleanup, err := loftDir()
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	ch, err := env.Spawn(ctx, role, dir, transport, strconv.Itoa(env.Size))
	if err != nil {
		return Result{}, err
	}
	f, err := ch.Expect(ctx, "ready")
	if err != nil {
		return Result{}, err
	}
	n, err := loftNode(ctx, dir, transport)
	if err != nil {
		return Result{}, err
	}
	defer n.Close()
	addr := ""
	if len(f) > 0 {
		addr = f[0]
	}
	s, err := n.Sender(ctx, target(transport, addr, "bench"))
	if err != nil {
		return Result{}, err
	}
	if err := waitAttached(ctx, s); err != nil {
		return Result{}, err
	}
	cpu0, mallocs0 := procCPU(), mallocs()
	sent, err := send(s)
	if err != nil {
		return Result{}, err
	}
	sendCPU, sendMallocs := procCPU()-cpu0, mallocs()-mallocs0
	if err := s.Send(ctx, nil); err != nil {
		return Result{}, err
	}
	f, err = ch.Expect(ctx, "done")
	if err != nil {
		return Result{}, err
	}
	if len(f) != 4 {
		return Result{}, fmt.Errorf("bad done line %q", f)
	}
	res, err := receiverResult(f[:2], sent)
	if err != nil {
		return Result{}, err
	}
	recvCPU, err1 := strconv.ParseInt(f[2], 10, 64)
	recvMallocs, err2 := strconv.ParseUint(f[3], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Result{}, fmt.Errorf("bad done line %q: %w", f, err)
	}
	if sent > 0 && procCPU() > 0 {
		n := float64(sent)
		res.SendCPUns, res.SendAllocs = float64(sendCPU.Nanoseconds())/n, float64(sendMallocs)/n
		res.RecvCPUns, res.RecvAllocs = float64(recvCPU)/n, float64(recvMallocs)/n
	}
	return res, nil
}

// mallocs returns the heap allocations this process has made so far.
func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

func loftOneway(transport string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		return oneway(ctx, env, "loft-recv", transport, func(s *loft.Sender) (int64, error) {
			msg := make([]byte, env.Size)
			for i := range msg {
				msg[i] = byte(i)
			}
			var sent int64
			start := time.Now()
			for time.Since(start) < env.Budget {
				for range 64 {
					if env.Size >= 8 {
						binary.LittleEndian.PutUint64(msg, uint64(sent))
					}
					if err := s.Send(ctx, msg); err != nil {
						return sent, err
					}
					sent++
				}
			}
			return sent, nil
		})
	}
}

// loftEchoRole: args dir transport size parentTCP rawAddr. Receives on
// "ping" and sends each message back on "pong". Unless rawAddr is "-", it
// also listens there (a Unix socket path, or a TCP address) for one raw
// connection and echoes messages of size bytes on it, for MeasurePaired.
// It tells the parent "ready <its TCP URL or -> <raw address or ->".
func loftEchoRole(ctx context.Context, args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want dir, transport, size, parent's TCP URL, raw address; got %q", args)
	}
	dir, transport, parent, rawAddr := args[0], args[1], args[3], args[4]
	size, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	n, err := loftNode(ctx, dir, transport)
	if err != nil {
		return err
	}
	defer n.Close()
	r, err := n.Receive(ctx, "ping", loft.ChannelOptions{Capacity: 16})
	if err != nil {
		return err
	}
	s, err := n.Sender(ctx, target(transport, parent, "pong"))
	if err != nil {
		return err
	}
	if err := waitAttached(ctx, s); err != nil {
		return err
	}
	if rawAddr != "-" {
		network := "unix"
		if transport == "tcp" {
			network = "tcp"
		}
		ln, err := net.Listen(network, rawAddr)
		if err != nil {
			return err
		}
		defer ln.Close()
		rawAddr = ln.Addr().String()
		go func() {
			c, err := ln.Accept()
			ln.Close()
			if err != nil {
				return
			}
			defer c.Close()
			echo(c, c, size)
		}()
	}
	if err := ToParent("ready %s %s", orDash(tcpAddr(n)), rawAddr); err != nil {
		return err
	}
	for {
		m, err := r.Recv(ctx)
		if err != nil {
			return err
		}
		if len(m.Data) == 0 {
			return nil
		}
		if err := s.Send(ctx, m.Data); err != nil {
			return err
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// loftPingPong times round trips through loft: the parent sends on "ping",
// the child echoes on "pong". At saturation over a Unix socket or TCP it
// also times a raw socket ping-pong between the same two processes, in
// alternating blocks (MeasurePaired), and reports its p50 and p99 in the
// Result's PairRaw fields.
func loftPingPong(transport string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		dir, cleanup, err := loftDir()
		if err != nil {
			return Result{}, err
		}
		defer cleanup()
		n, err := loftNode(ctx, dir, transport)
		if err != nil {
			return Result{}, err
		}
		defer n.Close()
		pong, err := n.Receive(ctx, "pong", loft.ChannelOptions{Capacity: 16})
		if err != nil {
			return Result{}, err
		}
		rawAddr := "-"
		if env.Rate <= 0 {
			switch transport {
			case "unix":
				rawAddr = filepath.Join(filepath.Dir(dir), "raw.sock")
			case "tcp":
				rawAddr = "127.0.0.1:0"
			}
		}
		ch, err := env.Spawn(ctx, "loft-echo", dir, transport, strconv.Itoa(env.Size), orDash(tcpAddr(n)), rawAddr)
		if err != nil {
			return Result{}, err
		}
		f, err := ch.Expect(ctx, "ready")
		if err != nil {
			return Result{}, err
		}
		if len(f) != 2 {
			return Result{}, fmt.Errorf("echo child said ready %q, want two addresses", f)
		}
		s, err := n.Sender(ctx, target(transport, f[0], "ping"))
		if err != nil {
			return Result{}, err
		}
		if err := waitAttached(ctx, s); err != nil {
			return Result{}, err
		}
		msg := make([]byte, env.Size)
		for i := range msg {
			msg[i] = byte(i)
		}
		buf := make([]byte, env.Size)
		viaLoft := func() error {
			if err := s.Send(ctx, msg); err != nil {
				return err
			}
			m, err := pong.Recv(ctx)
			if err != nil {
				return err
			}
			copy(buf, m.Data)
			if len(m.Data) != env.Size {
				return fmt.Errorf("echo of %d bytes, sent %d", len(m.Data), env.Size)
			}
			return nil
		}
		defer s.Send(ctx, nil)
		if f[1] == "-" {
			return MeasureRoundTripsAt(ctx, env.Budget, env.Rate, viaLoft)
		}
		network := "unix"
		if transport == "tcp" {
			network = "tcp"
		}
		var d net.Dialer
		raw, err := d.DialContext(ctx, network, f[1])
		if err != nil {
			return Result{}, err
		}
		defer raw.Close()
		raw.SetDeadline(ioLimit(env))
		in := make([]byte, env.Size)
		viaRaw := func() error {
			if _, err := raw.Write(msg); err != nil {
				return err
			}
			if _, err := io.ReadFull(raw, in); err != nil {
				return noEOF(err)
			}
			return nil
		}
		res, rr, err := MeasurePaired(ctx, env.Budget, viaLoft, viaRaw)
		res.PairRawP50ns, res.PairRawP99ns = rr.P50ns, rr.P99ns
		return res, err
	}
}

// loftLoanRecvRole reads every byte of each loaned message in place, then
// releases it.
func loftLoanRecvRole(ctx context.Context, args []string) error {
	var sum uint64
	return receiveRole(ctx, args, func(int) int { return 64 }, func(m loft.Message, count int64) error {
		sum ^= foldWords(m.Data) // read every byte in place: that is what a loan is for
		seq := binary.LittleEndian.Uint64(m.Data)
		m.Release()
		if seq != uint64(count) {
			return fmt.Errorf("message %d carries sequence %d", count, seq)
		}
		return nil
	})
}

// foldWords reads every byte of b (8 at a time) and folds them into one
// word, so the compiler cannot skip the reads.
func foldWords(b []byte) uint64 {
	var x uint64
	for len(b) >= 32 {
		x ^= binary.LittleEndian.Uint64(b) ^ binary.LittleEndian.Uint64(b[8:]) ^
			binary.LittleEndian.Uint64(b[16:]) ^ binary.LittleEndian.Uint64(b[24:])
		b = b[32:]
	}
	for _, c := range b {
		x ^= uint64(c)
	}
	return x
}

// loftLoanOneway sends through loans: the sender writes every byte of each
// message straight into shared memory, the receiver reads it in place.
func loftLoanOneway(transport string) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		return oneway(ctx, env, "loft-loan-recv", transport, func(s *loft.Sender) (int64, error) {
			msg := make([]byte, env.Size)
			for i := range msg {
				msg[i] = byte(i)
			}
			var sent int64
			start := time.Now()
			for time.Since(start) < env.Budget {
				l, err := s.Loan(ctx, env.Size)
				if err != nil {
					return sent, err
				}
				binary.LittleEndian.PutUint64(msg, uint64(sent))
				copy(l.Bytes(), msg)
				if err := s.SendLoan(ctx, l); err != nil {
					return sent, err
				}
				sent++
			}
			return sent, nil
		})
	}
}
