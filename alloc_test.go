package loft

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSteadyStateAllocs: a stream of small messages, received one Recv
// at a time with one context that has a deadline (a loop's), allocates
// nothing per message in steady state on any transport, both sides
// together (the two nodes share this process): neither the Recv that
// reads the connection itself, which registers the context's
// cancellation (once, not per read), nor a sender that waits for credit
// (woken without a new channel per wake-up).
func TestSteadyStateAllocs(t *testing.T) {
	onEachTransport(t, func(t *testing.T, ns []*Node) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		r, s := attachPair(t, ctx, ns, "allocs", 256)
		const warm, n = 50_000, 300_000
		sent := make(chan error, 1)
		go func() {
			msg := make([]byte, 64)
			for i := range warm + n {
				msg[0] = byte(i)
				if err := s.Send(ctx, msg); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		out := make([]byte, 64)
		var before map[[32]uintptr]int64
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		for i := range warm + n {
			if i == warm {
				runtime.MemProfileRate = 1 // (every allocation from now on)
				before = allocSites()
			}
			m, err := r.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m.Data[0] != byte(i) {
				t.Fatalf("message %d: got %d", i, m.Data[0])
			}
			copy(out, m.Data)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		// Allocations made on the way of a message, counted by where they
		// were made: the nodes' background work (discovery and the like)
		// allocates now and then, and a chunk that received messages are
		// read into is new once the last is full, by design (a Message
		// refers into its chunk). Registering the context per read cost
		// 0.0075 allocations per message, a channel per credit wake-up
		// 0.0005.
		var count int64
		for stack, objs := range allocSites() {
			if objs -= before[stack]; objs > 0 && onMessagePath(stack) {
				count += objs
			}
		}
		if per := float64(count) / n; per > 0.0001 {
			t.Errorf("%.5f allocations per message on the message path in steady state, want none", per)
		}
	})
}

// allocSites returns how many objects have been allocated at each stack
// (of the allocations sampled by runtime.MemProfileRate).
func allocSites() map[[32]uintptr]int64 {
	runtime.GC() // (the profile is as of the last collection)
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			break
		}
	}
	sites := map[[32]uintptr]int64{}
	for _, r := range recs[:n] {
		sites[r.Stack0] += r.AllocObjects
	}
	return sites
}

// onMessagePath reports whether an allocation at stack was made by a
// Sender, a Receiver or a conn, other than for a new read chunk.
func onMessagePath(stack [32]uintptr) bool {
	path := false
	for _, pc := range stack {
		if pc == 0 {
			break
		}
		f := runtime.FuncForPC(pc - 1)
		if f == nil {
			continue
		}
		name := f.Name()
		if strings.HasPrefix(name, "github.com/loft-ipc/loft/wire.") && strings.Contains(name, "alloc") {
			return false
		}
		for _, t := range []string{"(*Sender).", "(*Receiver).", "(*conn).", "(*link)."} {
			path = path || strings.HasPrefix(name, "github.com/loft-ipc/loft."+t)
		}
	}
	return path
}
