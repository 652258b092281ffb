package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"
)

// chanOneway hands messages from one goroutine to another over a channel
// buffered to 1024. To keep it comparable with the IPC cases, the sender
// copies the payload into a buffer taken from a free list and the receiver
// copies it out and returns the buffer, so every byte is written and read
// once. The free list holds at most 8 MiB (so that it stays in cache), so at
// 1 MiB only 8 messages are in flight.
func chanOneway(ctx context.Context, env Env) (Result, error) {
	size := env.Size
	nbuf := min(max((8<<20)/size, 4), 1024+2)
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, size)
	}
	data := make(chan []byte, 1024)
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}

	type recvResult struct {
		n   int64
		el  time.Duration
		err error
	}
	rc := make(chan recvResult, 1)
	go func() {
		dst := make([]byte, size)
		var n int64
		var first time.Time
		var err error
		for b := range data {
			copy(dst, b)
			if err == nil && size >= 8 && binary.LittleEndian.Uint64(dst) != uint64(n) {
				err = fmt.Errorf("message %d: sequence number %d", n, binary.LittleEndian.Uint64(dst))
			}
			if n == 0 {
				first = time.Now()
			}
			n++
			free <- b
		}
		rc <- recvResult{n, time.Since(first), err}
	}()

	var sent int64
	start := time.Now()
	check := int64(64)
	if size >= 64<<10 {
		check = 1
	}
	var err error
	for sent < 1<<40 {
		b := <-free
		copy(b, payload)
		if size >= 8 {
			binary.LittleEndian.PutUint64(b, uint64(sent))
		}
		data <- b
		sent++
		if sent%check == 0 {
			if time.Since(start) >= env.Budget {
				break
			}
			if ctx.Err() != nil {
				err = context.Cause(ctx)
				break
			}
		}
	}
	close(data)
	r := <-rc // the receiver drains at most 1024 messages: bounded
	if err != nil {
		return Result{}, err
	}
	if r.err != nil {
		return Result{}, r.err
	}
	if r.n != sent || r.n < 2 {
		return Result{}, fmt.Errorf("received %d messages of %d sent", r.n, sent)
	}
	return Result{Msgs: r.n, MsgsPerS: float64(r.n-1) / r.el.Seconds()}, nil
}

// chanPingPong bounces a message between two goroutines over two unbuffered
// channels. Each side copies the message it receives into its own buffer
// and sends that buffer on, so every byte is written and read on each leg.
func chanPingPong(ctx context.Context, env Env) (Result, error) {
	size := env.Size
	ping, pong := make(chan []byte), make(chan []byte)
	go func() {
		sb := make([]byte, size)
		for b := range ping {
			copy(sb, b)
			pong <- sb
		}
		close(pong)
	}()
	defer func() {
		close(ping)
		for range pong {
		}
	}()
	cb := make([]byte, size)
	for i := range cb {
		cb[i] = byte(i)
	}
	in := make([]byte, size)
	var seq uint64
	return MeasureRoundTrips(ctx, env.Budget, func() error {
		if size >= 8 {
			binary.LittleEndian.PutUint64(cb, seq)
		}
		ping <- cb
		copy(in, <-pong)
		if size >= 8 && binary.LittleEndian.Uint64(in) != seq {
			return fmt.Errorf("reply carries sequence number %d, want %d", binary.LittleEndian.Uint64(in), seq)
		}
		seq++
		return nil
	})
}
