package shmconn

import (
	"io"
	"testing"
	"time"
)

// benchPingPong sends size bytes one way and the same back, b.N times.
func benchPingPong(b *testing.B, cfg *Config, size int) {
	x, y := pair(b, cfg)
	defer x.Close()
	defer y.Close()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(y, buf); err != nil {
				done <- nil
				return
			}
			if _, err := y.Write(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	lost := LostWakeups()
	defer func() { b.ReportMetric(float64(LostWakeups()-lost), "lost-wakeups") }()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := x.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(x, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	x.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// benchStream writes b.N chunks of size bytes one way.
func benchStream(b *testing.B, cfg *Config, size int) {
	x, y := pair(b, cfg)
	defer y.Close()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, y)
		done <- err
	}()
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	lost := LostWakeups()
	defer func() { b.ReportMetric(float64(LostWakeups()-lost), "lost-wakeups") }()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := x.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	x.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
}

func BenchmarkPingPong64(b *testing.B) { benchPingPong(b, nil, 64) }

// BenchmarkPingPong64Parked parks on every message: the wake-up path.
func BenchmarkPingPong64Parked(b *testing.B) {
	benchPingPong(b, &Config{Spin: time.Nanosecond}, 64)
}

func BenchmarkPingPong64BusyPoll(b *testing.B) {
	benchPingPong(b, &Config{BusyPoll: true}, 64)
}

func BenchmarkStream64K(b *testing.B) { benchStream(b, nil, 64<<10) }

// BenchmarkStream4KRing streams through the smallest ring: the writer
// waits for room and the reader for data all the time.
func BenchmarkStream4KRing(b *testing.B) {
	benchStream(b, &Config{RingSize: 4096}, 1000)
}
