package loft

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// osThreads reads this process's OS thread count.
func osThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

// TestIdleReceiversDoNotPinThreads: 1,000 channels, each with a receiver
// parked in Recv and a sender attached over shared memory from 100 other
// nodes (100 shared-memory connections), cost goroutines, not OS threads.
func TestIdleReceiversDoNotPinThreads(t *testing.T) {
	dir := runtimeDir(t)
	rn := openNode(t, dir, Options{NoInProcess: true})
	senders := make([]*Node, 100)
	for i := range senders {
		senders[i] = openNode(t, dir, Options{NoInProcess: true})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const N = 1000
	var wg sync.WaitGroup
	rctx, rcancel := context.WithCancel(ctx)
	for i := 0; i < N; i++ {
		r, err := rn.Receive(ctx, fmt.Sprintf("idle-%d", i), ChannelOptions{Capacity: 1})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Recv(rctx)
		}()
	}
	var ss []*Sender
	for i := 0; i < N; i++ {
		s, err := senders[i%len(senders)].Sender(ctx, fmt.Sprintf("idle-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		ss = append(ss, s)
	}
	for _, s := range ss {
		waitReceivers(t, s, 1)
	}
	threads := osThreads(t)
	t.Logf("%d parked receivers, %d attached senders over shared memory: %d OS threads in the process", N, N, threads)
	if threads > 100 {
		t.Errorf("%d OS threads for %d idle channels: waiting pins threads", threads, N)
	}
	rcancel()
	wg.Wait()
}

// TestBusyPollIdleConnSpinsNothing: with BusyPoll, only a Recv waiting for
// data polls. Once nobody waits, the background readers of a
// shared-memory connection park: on a small machine a poller serving
// nobody would take a core from one that matters.
func TestBusyPollIdleConnSpinsNothing(t *testing.T) {
	dir := runtimeDir(t)
	a := openNode(t, dir, Options{NoInProcess: true, BusyPoll: true})
	b := openNode(t, dir, Options{NoInProcess: true, BusyPoll: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := a.Receive(ctx, "idle", ChannelOptions{Capacity: 16})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Sender(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	for i := range 10 {
		if err := s.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Nobody waits now. The background readers take the connections back
	// after readHandBack and must park, not poll.
	for _, n := range []*Node{a, b} {
		for !bgReading(n) {
			if ctx.Err() != nil {
				t.Fatal("the background readers never took the connections back")
			}
			time.Sleep(time.Millisecond)
		}
	}
	const span = 300 * time.Millisecond
	u0 := cpuTime(t)
	time.Sleep(span) // measuring idleness: nothing to wait for
	used := cpuTime(t) - u0
	t.Logf("an idle busy-polling connection used %v of CPU in %v", used, span)
	if used > span/5 {
		t.Errorf("an idle busy-polling connection used %v of CPU in %v: a background reader polls", used, span)
	}
}

// bgReading reports whether the background reader holds every conn of n.
func bgReading(n *Node) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.rmu.Lock()
		h := c.rholder
		c.rmu.Unlock()
		if h != readBG {
			return false
		}
	}
	return len(n.conns) > 0
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(t *testing.T) time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		t.Skip(err)
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}
