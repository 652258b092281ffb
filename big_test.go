package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBigMessages sends messages above and below the size at which payloads
// are written from their own memory, over every transport, interleaved with
// small ones, and checks every byte; the caller reuses its buffer at once.
func TestBigMessages(t *testing.T) {
	for _, tr := range []string{"shm", "unix", "tcp"} {
		for _, d := range []Delivery{AtLeastOnce, AtMostOnce} {
			t.Run(fmt.Sprintf("%s/%s", tr, d), func(t *testing.T) {
				dir := runtimeDir(t)
				ropts := Options{Dir: dir, NoSharedMemory: tr != "shm", NoInProcess: true}
				if tr == "tcp" {
					ropts.ListenTCP = "127.0.0.1:0"
				}
				rn := openNode(t, dir, ropts)
				sn := openNode(t, dir, Options{NoSharedMemory: tr != "shm", NoInProcess: true})
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				r, err := rn.Receive(ctx, "big", ChannelOptions{Capacity: 8, Delivery: d})
				if err != nil {
					t.Fatal(err)
				}
				target := "big"
				if tr == "tcp" {
					for _, a := range rn.Addrs() {
						if strings.HasPrefix(a, "tcp://") {
							target = a + "/big"
						}
					}
				}
				s, err := sn.Sender(ctx, target)
				if err != nil {
					t.Fatal(err)
				}
				sizes := []int{1 << 20, 10, bigMessage, bigMessage - 1, 300 << 10, 0, 3 << 20, 64}
				buf := make([]byte, 3<<20)
				go func() {
					for i, n := range sizes {
						fill(buf[:n], i)
						if err := s.Send(ctx, buf[:n]); err != nil {
							t.Error(err)
							return
						}
						fill(buf, 255) // the caller reuses its buffer at once
					}
				}()
				want := make([]byte, 3<<20)
				for i, n := range sizes {
					m, err := r.Recv(ctx)
					if err != nil {
						t.Fatal(err)
					}
					fill(want[:n], i)
					if !bytes.Equal(m.Data, want[:n]) {
						t.Fatalf("message %d (%d bytes): got %d bytes, content differs", i, n, len(m.Data))
					}
				}
			})
		}
	}
}

func fill(b []byte, seed int) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(seed)<<32|uint64(i))
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(seed)
	}
}

// TestBigCopiesReused: a stream of large messages whose retained copies
// are reused once acknowledged (Sender.keepBig) arrives intact, every byte
// checked, over a Unix socket (over shared memory large messages are lent
// instead: TestLentMessages).
func TestBigCopiesReused(t *testing.T) {
	for _, tr := range []string{"unix"} {
		t.Run(tr, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			opts := Options{NoSharedMemory: true, NoInProcess: true}
			r, s := linked(t, ctx, "big", opts, opts, ChannelOptions{Capacity: 4})
			const n = 200
			size := func(i int) int { return 200<<10 + (i%5)*100<<10 } // 200 to 600 KiB
			errc := make(chan error, 1)
			go func() {
				buf := make([]byte, 600<<10)
				for i := range n {
					fill(buf[:size(i)], i)
					if err := s.Send(ctx, buf[:size(i)]); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			want := make([]byte, 600<<10)
			for i := range n {
				m, err := r.Recv(ctx)
				if err != nil {
					t.Fatal(err)
				}
				fill(want[:size(i)], i)
				if !bytes.Equal(m.Data, want[:size(i)]) {
					t.Fatalf("message %d (%d bytes): got %d bytes, content differs", i, size(i), len(m.Data))
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			s.mu.Lock()
			reused := len(s.bigFree) > 0
			s.mu.Unlock()
			if !reused {
				t.Fatal("no acknowledged copy came back for reuse: the test checked nothing")
			}
		})
	}
}
