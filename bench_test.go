package loft

import (
	"context"
	"path/filepath"
	"testing"
)

func BenchmarkSendRecvUnix(b *testing.B) {
	for _, size := range []int{64, 4096} {
		b.Run(byteSize(size), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "rt")
			ctx := context.Background()
			rn, err := Open(ctx, Options{Dir: dir})
			if err != nil {
				b.Fatal(err)
			}
			defer rn.Close()
			sn, err := Open(ctx, Options{Dir: dir})
			if err != nil {
				b.Fatal(err)
			}
			defer sn.Close()
			r, _ := rn.Receive(ctx, "bench", ChannelOptions{Capacity: 4096})
			s, _ := sn.Sender(ctx, "bench")
			msg := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < b.N; i++ {
					if _, err := r.Recv(ctx); err != nil {
						b.Error(err)
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
