package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/loft-ipc/loft/wire"
	"golang.org/x/sys/unix"
)

func TestLoanRoundTrip(t *testing.T) {
	for _, shm := range []bool{true, false} {
		name := map[bool]string{true: "shm", false: "unix"}[shm]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r, s := linked(t, ctx, "loans", Options{NoSharedMemory: !shm, NoInProcess: true},
				Options{NoSharedMemory: !shm, NoInProcess: true, LoanPoolSize: 1 << 20}, ChannelOptions{Capacity: 64})
			// 40 loans of 300 KiB through a 1 MiB pool: only 3 fit at once,
			// so the sender must wait for the receiver's releases.
			const N, size = 40, 300 << 10
			go func() {
				for i := 0; i < N; i++ {
					l, err := s.Loan(ctx, size)
					if err != nil {
						t.Error(err)
						return
					}
					fill(l.Bytes(), i)
					if err := s.SendLoan(ctx, l); err != nil {
						t.Error(err)
						return
					}
					if err := s.SendLoan(ctx, l); !errors.Is(err, ErrLoanUsed) {
						t.Errorf("second SendLoan of one loan: %v", err)
					}
				}
			}()
			want := make([]byte, size)
			for i := 0; i < N; i++ {
				m, err := r.Recv(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !m.Loaned() {
					t.Fatal("message did not arrive as a loan")
				}
				fill(want, i)
				if !bytes.Equal(m.Data, want) {
					t.Fatalf("loan %d: content differs", i)
				}
				m.Release()
				m.Release() // harmless
			}
			if _, err := s.Loan(ctx, 2<<20); !errors.Is(err, ErrLoanTooLarge) {
				t.Fatalf("loan above the pool size: %v", err)
			}
		})
	}
}

// toHolder starts a child process that receives on name (capacity cap)
// and never takes a message, and returns a sender to it from a node of this
// process with a loan pool of 1 MiB.
func toHolder(t *testing.T, ctx context.Context, name string, cap int) (string, *child, *Sender) {
	t.Helper()
	dir := runtimeDir(t)
	hold := startChild(t, dir, "hold", "name="+name, fmt.Sprintf("cap=%d", cap))
	hold.Expect("ready", 10*time.Second)
	sn := openNode(t, dir, Options{LoanPoolSize: 1 << 20})
	s, err := sn.Sender(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	return dir, hold, s
}

// TestLoanReceiverKilled: loans held by a receiver that dies come back to
// the sender's pool, and under AtLeastOnce their content goes to another
// receiver.
func TestLoanReceiverKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, hold, s := toHolder(t, ctx, "loans", 16)
	// Fill the whole pool with loans the holder never releases.
	for i := 0; i < 16; i++ {
		l, err := s.Loan(ctx, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint64(l.Bytes(), uint64(i))
		if err := s.SendLoan(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	hold.Kill()
	rn := openNode(t, dir, Options{})
	r, err := rn.Receive(ctx, "loans", ChannelOptions{Capacity: 16})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for len(seen) < 16 {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("after the holder died, %d of 16 loaned messages came again: %v", len(seen), err)
		}
		seen[binary.LittleEndian.Uint64(m.Data)] = true
		m.Release()
	}
	// The dead connection's pool is gone; a new loan works on the new one.
	l, err := s.Loan(ctx, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	l.Discard()
}

// TestLoanForgedRange: a LOAN frame pointing outside its pool closes the
// connection, and the node carries on.
func TestLoanForgedRange(t *testing.T) {
	dir := runtimeDir(t)
	rn := openNode(t, dir, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rn.Receive(ctx, "jobs", ChannelOptions{Capacity: 4}); err != nil {
		t.Fatal(err)
	}
	c, rd := rawConn(t, rn, "unix")
	p := binary.AppendUvarint(nil, 1) // att
	for _, v := range []uint64{1, 1, 99, 0, 10} {
		p = binary.AppendUvarint(p, v) // floor, id, unknown pool, off, len
	}
	c.Write(append(attachFrame(1, kindChannel, "jobs"), wire.AppendFrame(nil, wire.TLoan, 0, p)...))
	expectClosed(t, c, rd)
}

// TestPoolPopulatedAhead: a loan pool's pages are faulted in ahead of its
// loans, a step at a time (mincore reports them resident), and not past
// the step the loans reached.
func TestPoolPopulatedAhead(t *testing.T) {
	const size = 4 * populateStep
	p, fd, err := newOutPool(size)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	defer p.m.unref()
	resident := func(from, to int) int {
		vec := make([]byte, (to-from)/os.Getpagesize())
		b := p.m.mem[from:to]
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatal(e)
		}
		n := 0
		for _, v := range vec {
			n += int(v & 1)
		}
		return n
	}
	p.mu.Lock()
	off, ok := p.takeLocked(1)
	p.mu.Unlock()
	if !ok || off != 0 {
		t.Fatalf("first loan at %d, %v", off, ok)
	}
	pages := populateStep / os.Getpagesize()
	if n := resident(0, populateStep); n != pages {
		t.Fatalf("%d of the first step's %d pages resident after a loan in it", n, pages)
	}
	if n := resident(populateStep, size); n != 0 {
		t.Fatalf("%d pages resident past the first step", n)
	}
}
