package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The raw shared-memory ring: the floor under loft's shared-memory
// transport, measured the way loft is (two processes, every payload byte
// written by the sender and copied out by the receiver, sequence numbers
// checked). A single-producer, single-consumer ring in a memfd, with
// nothing else: no framing beyond a length, no flow control beyond the
// ring, no retention, no wake-ups (both sides busy-poll, so the case is
// pinned, each side on its own CPU). "raw" publishes the producer's index
// after every message, as one write per message does on a socket;
// "raw-batched" after every rawBatch messages.
//
// Layout of the memfd: the producer's tail (bytes written, a uint64) at 0,
// the consumer's head at 64 (its own cache line), a "finished" word at
// 128 (the tail the sender ended at, plus one), records from ringData on.
// A record is a little-endian uint32 length, the payload, and padding to
// 8 bytes; a length of ringSkip means the rest of the ring up to its end
// is padding.
const (
	ringData = 4096
	ringSize = 4 << 20
	ringSkip = 0xffffffff
)

func init() {
	Register(
		Case{System: "raw", Transport: "shm-ring", Pattern: "oneway", Mode: "polling", MaxSize: 64 << 10, Pin: true, Run: ringOneway(1)},
		Case{System: "raw-batched", Transport: "shm-ring", Pattern: "oneway", Mode: "polling", MaxSize: 64 << 10, Pin: true, Run: ringOneway(rawBatch)},
		Case{System: "raw", Transport: "shm-ring", Pattern: "pingpong", Mode: "polling", MaxSize: 64 << 10, Pin: true, Run: ringPingPong},
	)
	RegisterRole("raw-ring-recv", ringRecvRole)
	RegisterRole("raw-ring-echo", ringEchoRole)
}

func ringWord(mem []byte, off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&mem[off]))
}

// ringRecord is the bytes a message of size takes in the ring.
func ringRecord(size int) int { return (4 + size + 7) &^ 7 }

func ringOneway(batch int) func(context.Context, Env) (Result, error) {
	return func(ctx context.Context, env Env) (Result, error) {
		mem, ch, done, err := memfdChild(ctx, env, "raw-ring-recv", ringData+ringSize)
		if err != nil {
			return Result{}, err
		}
		defer done()
		sent, err := ringSend(ctx, mem, env.Size, batch, env.Budget)
		if err != nil {
			return Result{}, err
		}
		fields, err := ch.Expect(ctx, "done")
		if err != nil {
			return Result{}, err
		}
		return receiverResult(fields, sent)
	}
}

// memfdChild maps a new memfd of size bytes and starts a child playing
// role with it as its first inherited file and env.Size as its argument,
// once it said "ready". done unmaps the memory.
func memfdChild(ctx context.Context, env Env, role string, size int) (mem []byte, ch *Child, done func(), err error) {
	fd, err := unix.MemfdCreate("loft-bench-"+role, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, nil, err
	}
	f := os.NewFile(uintptr(fd), role)
	defer f.Close() // (the child has its own descriptor once spawned)
	if err := f.Truncate(int64(size)); err != nil {
		return nil, nil, nil, err
	}
	mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, nil, err
	}
	done = func() { unix.Munmap(mem) }
	if ch, err = env.SpawnFiles(ctx, role, []*os.File{f}, strconv.Itoa(env.Size)); err == nil {
		_, err = ch.Expect(ctx, "ready")
	}
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return mem, ch, done, nil
}

// ringSend writes messages of size into the ring for about budget,
// publishing its tail every batch messages, then marks the ring finished.
func ringSend(ctx context.Context, mem []byte, size, batch int, budget time.Duration) (int64, error) {
	tail, head, fin := ringWord(mem, 0), ringWord(mem, 64), ringWord(mem, 128)
	data := mem[ringData:]
	rec := ringRecord(size)
	payload := make([]byte, size)
	for j := range payload {
		payload[j] = byte(j)
	}
	var t, seen uint64 // our tail, and the head last read
	var n int64
	start := time.Now()
	// room waits until rec bytes past t are free.
	room := func(need uint64) error {
		for i := 0; t+need-seen > ringSize; i++ {
			seen = head.Load()
			if i&0xfffff == 0xfffff && ctx.Err() != nil {
				return context.Cause(ctx)
			}
		}
		return nil
	}
	for {
		for range batch {
			p := t % ringSize
			if p+uint64(rec) > ringSize {
				if err := room(ringSize - p); err != nil {
					return n, err
				}
				binary.LittleEndian.PutUint32(data[p:], ringSkip)
				t += ringSize - p
				p = 0
			}
			if err := room(uint64(rec)); err != nil {
				return n, err
			}
			binary.LittleEndian.PutUint32(data[p:], uint32(size))
			copy(data[p+4:], payload)
			if size >= 8 {
				binary.LittleEndian.PutUint64(data[p+4:], uint64(n))
			}
			t += uint64(rec)
			n++
			if batch == 1 {
				tail.Store(t)
			}
		}
		tail.Store(t)
		if n&1023 < int64(batch) && (time.Since(start) >= budget || ctx.Err() != nil) {
			break
		}
	}
	fin.Store(t + 1)
	return n, context.Cause(ctx)
}

// ringRecvRole is the receiving child of the shared-memory ring cases.
// Args: size. The ring's memfd is descriptor 3.
func ringRecvRole(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want size; got %q", args)
	}
	size, err := strconv.Atoi(args[0])
	if err != nil || size < 0 || size > ringSize/2 {
		return fmt.Errorf("bad size %q", args[0])
	}
	f := InheritedFile(0, "ring")
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, ringData+ringSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	if err := ToParent("ready"); err != nil {
		return err
	}
	tail, head, fin := ringWord(mem, 0), ringWord(mem, 64), ringWord(mem, 128)
	data := mem[ringData:]
	rec := uint64(ringRecord(size))
	msg := make([]byte, size)
	var h, avail uint64 // our head, and the tail last read
	var n int64
	var first time.Time
	for i := 0; ; i++ {
		if h == avail {
			if avail = tail.Load(); h == avail {
				if e := fin.Load(); e != 0 && e-1 == h {
					break
				}
				if i&0xfffff == 0xfffff && ctx.Err() != nil {
					return context.Cause(ctx)
				}
				continue
			}
			if n == 0 {
				first = time.Now()
			}
		}
		p := h % ringSize
		ln := binary.LittleEndian.Uint32(data[p:])
		if ln == ringSkip {
			h += ringSize - p
			continue
		}
		if ln != uint32(size) || p+rec > ringSize {
			return fmt.Errorf("message %d: length %d at %d, want %d", n, ln, p, size)
		}
		copy(msg, data[p+4:p+4+uint64(size)])
		if size >= 8 && binary.LittleEndian.Uint64(msg) != uint64(n) {
			return fmt.Errorf("message %d: sequence number %d", n, binary.LittleEndian.Uint64(msg))
		}
		h += rec
		n++
		head.Store(h)
	}
	if n == 0 {
		return ToParent("done 0 0")
	}
	return ToParent("done %d %d", n, time.Since(first).Nanoseconds())
}

// The raw shared-memory ping-pong: the floor under a polling ping-pong on
// this machine. Two slots in a memfd, one per direction, each a sequence
// word on its own cache line and the payload after it (slot A at
// ringData, slot B at ringData+pongSlot). The parent writes the payload
// into A and stores the round trip's number in A's word; the child spins
// on that word, copies the payload out and checks it, writes it into B and
// stores the number in B's word; the parent spins on B's word and copies
// the answer out. A number of pongDone in A's word ends the child.
const (
	pongSlot = 128 << 10
	pongDone = ^uint64(0)
)

func ringPingPong(ctx context.Context, env Env) (Result, error) {
	mem, ch, done, err := memfdChild(ctx, env, "raw-ring-echo", ringData+2*pongSlot)
	if err != nil {
		return Result{}, err
	}
	defer done()
	a, b := ringWord(mem, ringData), ringWord(mem, ringData+pongSlot)
	aData, bData := mem[ringData+64:ringData+pongSlot], mem[ringData+pongSlot+64:]
	payload, answer := make([]byte, env.Size), make([]byte, env.Size)
	for j := range payload {
		payload[j] = byte(j)
	}
	var i uint64
	res, err := MeasureRoundTrips(ctx, env.Budget, func() error {
		i++
		if len(payload) >= 8 {
			binary.LittleEndian.PutUint64(payload, i) // (every byte is written by the copy below)
		}
		copy(aData, payload)
		a.Store(i)
		for k := 0; b.Load() != i; k++ {
			if k&0xfffff == 0xfffff && ctx.Err() != nil {
				return context.Cause(ctx)
			}
		}
		copy(answer, bData)
		if !bytes.Equal(answer, payload) {
			return fmt.Errorf("round trip %d: the answer differs from the request", i)
		}
		return nil
	})
	a.Store(pongDone)
	if err != nil {
		return Result{}, err
	}
	if _, err := ch.Expect(ctx, "done"); err != nil {
		return Result{}, err
	}
	return res, nil
}

// ringEchoRole is the child of the raw shared-memory ping-pong. Args:
// size. The memfd is descriptor 3.
func ringEchoRole(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want size; got %q", args)
	}
	size, err := strconv.Atoi(args[0])
	if err != nil || size < 0 || size > pongSlot-64 {
		return fmt.Errorf("bad size %q", args[0])
	}
	f := InheritedFile(0, "pong")
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, ringData+2*pongSlot, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	if err := ToParent("ready"); err != nil {
		return err
	}
	a, b := ringWord(mem, ringData), ringWord(mem, ringData+pongSlot)
	aData, bData := mem[ringData+64:ringData+pongSlot], mem[ringData+pongSlot+64:]
	msg := make([]byte, size)
	for last, k := uint64(0), 0; ; k++ {
		v := a.Load()
		if v == last {
			if k&0xfffff == 0xfffff && ctx.Err() != nil {
				return context.Cause(ctx)
			}
			continue
		}
		if v == pongDone {
			return ToParent("done")
		}
		copy(msg, aData)
		copy(bData, msg)
		b.Store(v)
		last = v
	}
}
