package loft

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkSendRecv streams messages one way between two nodes of this
// process, one Send and one Recv per message, over a Unix socket and over
// shared memory. With -cpu 1 its time per message is the CPU both sides
// spend on a message; loft bench runs the two sides in two processes.
func BenchmarkSendRecv(b *testing.B) {
	for _, tr := range []string{"unix", "shm"} {
		for _, size := range []int{64, 4096} {
			b.Run(tr+"/"+byteSize(size), func(b *testing.B) {
				ctx := context.Background()
				s, r := streamPair(b, tr)
				msg := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				done := make(chan struct{})
				go func() {
					defer close(done)
					for i := 0; i < b.N; i++ {
						m, err := r.Recv(ctx)
						if err != nil {
							b.Error(err)
							return
						}
						if len(m.Data) != size {
							b.Errorf("got %d bytes, sent %d", len(m.Data), size)
							return
						}
					}
				}()
				for i := 0; i < b.N; i++ {
					if err := s.Send(ctx, msg); err != nil {
						b.Fatal(err)
					}
				}
				<-done
			})
		}
	}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return itoa(n>>10) + "KiB"
	}
	return itoa(n) + "B"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func BenchmarkPingPong(b *testing.B) {
	for _, shm := range []bool{false, true} {
		name := "unix"
		if shm {
			name = "shm"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			sa, pong := echoPair(b, Options{NoSharedMemory: !shm, NoInProcess: true})
			msg := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := sa.Send(ctx, msg); err != nil {
					b.Fatal(err)
				}
				if _, err := pong.Recv(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRawUnixPingPong(b *testing.B) {
	path := filepath.Join(b.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			c.Write(buf)
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for i := 0; i < b.N; i++ {
		c.Write(buf)
		io.ReadFull(c, buf)
	}
}

func BenchmarkPingPongInProcess(b *testing.B) {
	sa, pong := echoPair(b, Options{})
	b.ReportAllocs()
	pingPongs(b, sa, pong)
}

// childEcho starts a child playing role (an echo from "ping" to "pong"),
// with args, over a Unix socket only if noShm, and returns this process's
// sender to "ping" and receiver of "pong".
func childEcho(b *testing.B, role string, noShm bool, args ...string) (*Sender, *Receiver) {
	b.Helper()
	ctx := context.Background()
	dir := runtimeDir(b)
	args = append([]string{"name=ping", "reply=pong"}, args...)
	if noShm {
		args = append(args, "noshm=1")
	}
	c := startChild(b, dir, role, args...)
	c.Expect("ready", 10*time.Second)
	n := openNode(b, dir, Options{NoSharedMemory: noShm})
	pong, err := n.Receive(ctx, "pong", ChannelOptions{Capacity: 16})
	if err != nil {
		b.Fatal(err)
	}
	s, err := n.Sender(ctx, "ping")
	if err != nil {
		b.Fatal(err)
	}
	waitReceivers(b, s, 1)
	return s, pong
}

// pingPongs sends a 64-byte message with s and waits for its echo on pong,
// b.N times.
func pingPongs(b *testing.B, s *Sender, pong *Receiver) {
	ctx := context.Background()
	msg := make([]byte, 64)
	for b.Loop() {
		if err := s.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if _, err := pong.Recv(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPingPongVsRaw times 64-byte round trips to another process over
// a Unix socket, through loft and through a raw socket, in alternating
// blocks between the same two processes, so that both see the same CPU
// placement and load, and reports each p50 and their ratio. (loft bench
// runs the two in separate pairs of processes, one after the other; where
// the kernel puts them moves that ratio by a third between runs.)
func BenchmarkPingPongVsRaw(b *testing.B) {
	ctx := context.Background()
	sock := filepath.Join(b.TempDir(), "raw.sock")
	s, pong := childEcho(b, "echo2", true, "sock="+sock)
	raw, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	msg, buf := make([]byte, 64), make([]byte, 64)
	lt, rt := make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(500, b.N-done)
		for range k {
			t0 := time.Now()
			if err := s.Send(ctx, msg); err != nil {
				b.Fatal(err)
			}
			if _, err := pong.Recv(ctx); err != nil {
				b.Fatal(err)
			}
			lt = append(lt, time.Since(t0))
		}
		for range k {
			t0 := time.Now()
			if _, err := raw.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(raw, buf); err != nil {
				b.Fatal(err)
			}
			rt = append(rt, time.Since(t0))
		}
		done += k
	}
	b.StopTimer()
	s.Send(ctx, nil)
	slices.Sort(lt)
	slices.Sort(rt)
	l50, r50 := lt[len(lt)/2], rt[len(rt)/2]
	b.ReportMetric(float64(l50.Nanoseconds()), "loft-p50-ns")
	b.ReportMetric(float64(r50.Nanoseconds()), "raw-p50-ns")
	b.ReportMetric(float64(l50)/float64(r50), "loft/raw")
}

// BenchmarkPingPongPoll is BenchmarkPingPong/shm with both nodes
// busy-polling (Options.BusyPoll), and reports the p50 round trip: with
// -cpu 2 each side has a core, and the time is the path of a message
// through loft, Send to Recv, twice.
func BenchmarkPingPongPoll(b *testing.B) {
	ctx := context.Background()
	sa, pong := echoPair(b, Options{NoInProcess: true, BusyPoll: true})
	msg := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if err := sa.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if _, err := pong.Recv(ctx); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
}

// echoPair opens two nodes of this process with opts, an echo from "ping"
// to "pong" on one, and returns the other's sender to "ping" and receiver
// of "pong". The nodes close when the benchmark ends.
func echoPair(b *testing.B, opts Options) (*Sender, *Receiver) {
	opts.Dir = filepath.Join(b.TempDir(), "rt")
	ctx := context.Background()
	a, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	z, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { z.Close() })
	ping, _ := z.Receive(ctx, "ping", ChannelOptions{Capacity: 16})
	pong, _ := a.Receive(ctx, "pong", ChannelOptions{Capacity: 16})
	sa, _ := a.Sender(ctx, "ping")
	sz, _ := z.Sender(ctx, "pong")
	waitReceivers(b, sa, 1)
	waitReceivers(b, sz, 1)
	go func() {
		for {
			m, err := ping.Recv(ctx)
			if err != nil || sz.Send(ctx, m.Data) != nil {
				return
			}
		}
	}()
	return sa, pong
}

// streamPair opens two nodes of this process that talk over transport tr
// ("unix" or "shm"), a receiver of "bench" on one and a sender to it on
// the other. The nodes close when the benchmark ends.
func streamPair(b *testing.B, tr string) (*Sender, *Receiver) {
	ctx := context.Background()
	opts := Options{Dir: filepath.Join(b.TempDir(), "rt"), NoInProcess: true, NoSharedMemory: tr == "unix"}
	rn, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rn.Close() })
	sn, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sn.Close() })
	r, _ := rn.Receive(ctx, "bench", ChannelOptions{Capacity: 4096})
	s, _ := sn.Sender(ctx, "bench")
	waitReceivers(b, s, 1)
	return s, r
}
