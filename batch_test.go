package loft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestSendBatchRecvBatch streams messages with SendBatch, in batches of
// many sizes that mix in large messages (their own frames, or loans over
// shared memory) and stop at one over the channel's limit, to two
// competing receivers on two nodes that take them with RecvBatch and Recv: every
// message arrives once, each receiver sees its share in order, and the
// oversized message fails alone.
func TestSendBatchRecvBatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		d    Delivery
	}{
		{"shm", Options{NoInProcess: true}, AtLeastOnce},
		{"unix", Options{NoSharedMemory: true, NoInProcess: true}, AtLeastOnce},
		{"unix-at-most-once", Options{NoSharedMemory: true, NoInProcess: true}, AtMostOnce},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "rt")
			tc.opts.Dir = dir
			a, b, c := openNode(t, dir, tc.opts), openNode(t, dir, tc.opts), openNode(t, dir, tc.opts)
			copts := ChannelOptions{Capacity: 64, MaxMessageSize: 256 << 10, Delivery: tc.d}
			r1, err := b.Receive(ctx, "batch", copts)
			if err != nil {
				t.Fatal(err)
			}
			r2, err := c.Receive(ctx, "batch", copts)
			if err != nil {
				t.Fatal(err)
			}
			s, err := a.Sender(ctx, "batch")
			if err != nil {
				t.Fatal(err)
			}
			waitReceivers(t, s, 2)
			const total = 20000
			msg := func(i int) []byte {
				n := 8 + i%50
				if i%997 == 0 {
					n = bigMessage + i%1000 // a frame of its own, or a loan
				}
				b := make([]byte, n)
				binary.LittleEndian.PutUint64(b, uint64(i))
				for j := 8; j < n; j++ {
					b[j] = byte(i + j)
				}
				return b
			}
			type got struct {
				r *Receiver
				i int
			}
			results := make(chan got, total)
			errs := make(chan error, 2)
			recvAll := func(r *Receiver, batch bool) {
				ms := make([]Message, 37)
				last := -1
				for {
					var n int
					var err error
					if batch {
						n, err = r.RecvBatch(ctx, ms)
					} else {
						ms[0], err = r.Recv(ctx)
						n = 1
					}
					if err != nil {
						errs <- err
						return
					}
					for _, m := range ms[:n] {
						i := int(binary.LittleEndian.Uint64(m.Data))
						want := msg(i)
						if string(m.Data) != string(want) {
							errs <- fmt.Errorf("message %d: %d bytes, corrupt", i, len(m.Data))
							return
						}
						if i <= last {
							errs <- fmt.Errorf("%s: message %d after %d", r.Name(), i, last)
							return
						}
						last = i
						m.Release()
						results <- got{r, i}
					}
				}
			}
			go recvAll(r1, true)
			go recvAll(r2, false)
			sent := 0
			for batch := 1; sent < total; batch = batch%200 + 7 {
				k := min(batch, total-sent)
				msgs := make([][]byte, k)
				for j := range msgs {
					msgs[j] = msg(sent + j)
				}
				n, err := s.SendBatch(ctx, msgs)
				if err != nil || n != k {
					t.Fatalf("SendBatch of %d from %d: %d, %v", k, sent, n, err)
				}
				sent += k
			}
			// One over the limit fails alone, after the ones before it.
			n, err := s.SendBatch(ctx, [][]byte{msg(total), make([]byte, 300<<10), msg(total + 1)})
			if n != 1 || !errors.Is(err, ErrTooLarge) {
				t.Fatalf("oversized in a batch: %d, %v", n, err)
			}
			seen := make([]bool, total+2)
			share := map[*Receiver]int{}
			for range total + 1 {
				select {
				case g := <-results:
					if seen[g.i] {
						t.Fatalf("message %d twice", g.i)
					}
					seen[g.i] = true
					share[g.r]++
				case err := <-errs:
					t.Fatal(err)
				case <-ctx.Done():
					t.Fatal(ctx.Err())
				}
			}
			if share[r1] == 0 || share[r2] == 0 {
				t.Errorf("one receiver got everything: %d and %d", share[r1], share[r2])
			}
			cancel()
		})
	}
}

// BenchmarkSendRecvBatch is BenchmarkSendRecv with SendBatch and
// RecvBatch, 64 messages at a time.
func BenchmarkSendRecvBatch(b *testing.B) {
	for _, tr := range []string{"unix", "shm"} {
		b.Run(tr+"/64B", func(b *testing.B) {
			ctx := context.Background()
			s, r := streamPair(b, tr)
			const batch = 64
			msgs := make([][]byte, batch)
			for i := range msgs {
				msgs[i] = make([]byte, 64)
			}
			b.SetBytes(64)
			b.ReportAllocs()
			b.ResetTimer()
			done := make(chan struct{})
			go func() {
				defer close(done)
				ms := make([]Message, batch)
				for got := 0; got < b.N; {
					n, err := r.RecvBatch(ctx, ms)
					if err != nil {
						b.Error(err)
						return
					}
					got += n
				}
			}()
			for sent := 0; sent < b.N; {
				k := min(batch, b.N-sent)
				if _, err := s.SendBatch(ctx, msgs[:k]); err != nil {
					b.Fatal(err)
				}
				sent += k
			}
			<-done
		})
	}
}
