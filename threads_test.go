package loft

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
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
