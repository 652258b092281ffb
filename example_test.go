package loft_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/shm"
)

// exampleDir gives each example a private runtime directory, so that it
// does not see the names of other programs. Real programs leave
// Options.Dir empty and share the per-user one.
func exampleDir() (string, func()) {
	d, _ := os.MkdirTemp("", "loft-example-")
	return filepath.Join(d, "rt"), func() { os.RemoveAll(d) }
}

// Producer-consumer: one node sends a sequence of messages by channel name,
// another receives them in order. In real use each node is its own process.
func Example_producerConsumer() {
	dir, done := exampleDir()
	defer done()
	ctx := context.Background()

	consumer, _ := loft.Open(ctx, loft.Options{Dir: dir})
	defer consumer.Close()
	jobs, _ := consumer.Receive(ctx, "jobs", loft.ChannelOptions{Capacity: 16})

	producer, _ := loft.Open(ctx, loft.Options{Dir: dir})
	defer producer.Close()
	out, _ := producer.Sender(ctx, "jobs")
	for i := 1; i <= 3; i++ {
		out.Send(ctx, []byte(fmt.Sprintf("job %d", i)))
	}

	for i := 0; i < 3; i++ {
		m, _ := jobs.Recv(ctx)
		fmt.Println(string(m.Data))
	}
	// Output:
	// job 1
	// job 2
	// job 3
}

// Worker pool: several workers receive from one channel; each message goes
// to exactly one of them. Handle runs the work with bounded concurrency and
// acknowledges a job only once it is done.
func Example_workerPool() {
	dir, done := exampleDir()
	defer done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var results []string
	var wg sync.WaitGroup
	wg.Add(6)
	for w := 0; w < 2; w++ {
		node, _ := loft.Open(ctx, loft.Options{Dir: dir})
		defer node.Close()
		tasks, _ := node.Receive(ctx, "tasks", loft.ChannelOptions{Capacity: 4})
		go tasks.Handle(ctx, 2, func(_ context.Context, m loft.Message) {
			mu.Lock()
			results = append(results, string(m.Data))
			mu.Unlock()
			wg.Done()
		})
	}

	client, _ := loft.Open(ctx, loft.Options{Dir: dir})
	defer client.Close()
	tasks, _ := client.Sender(ctx, "tasks")
	for i := 0; i < 6; i++ {
		tasks.Send(ctx, []byte(fmt.Sprintf("task %d", i)))
	}
	wg.Wait()
	sort.Strings(results)
	fmt.Println(len(results), "tasks done:", results[0], "...", results[5])
	// Output: 6 tasks done: task 0 ... task 5
}

// Shared state: processes map one named region and guard it with a robust
// mutex that lives inside it.
func Example_sharedState() {
	dir, done := exampleDir()
	defer done()
	os.MkdirAll(dir, 0o700)
	opts := &shm.Options{Dir: dir}

	region, _ := shm.Create("counters", 4096, opts)
	defer region.Close()
	mu, _ := shm.NewMutex(region, 0)
	hits, _ := shm.NewCounter(region, 8)

	// Another process would shm.Open("counters", opts) and do the same.
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := mu.Lock(ctx); err != nil {
			fmt.Println("lock:", err) // ErrOwnerDead: the last holder died; repair, then mu.Consistent()
			return
		}
		hits.Add(1)
		mu.Unlock()
	}
	fmt.Println("hits:", hits.Load())
	// Output: hits: 3
}

// Publish/subscribe: every subscriber gets every message.
func Example_pubSub() {
	dir, done := exampleDir()
	defer done()
	ctx := context.Background()

	var subs []*loft.Receiver
	for i := 0; i < 2; i++ {
		n, _ := loft.Open(ctx, loft.Options{Dir: dir})
		defer n.Close()
		r, _ := n.Subscribe(ctx, "news", loft.ChannelOptions{Capacity: 8})
		subs = append(subs, r)
	}
	pub, _ := loft.Open(ctx, loft.Options{Dir: dir})
	defer pub.Close()
	news, _ := pub.Publisher(ctx, "news")
	news.WaitReceivers(ctx, 2) // subscribers are found within milliseconds
	news.Send(ctx, []byte("hello, subscribers"))
	for _, r := range subs {
		m, _ := r.Recv(ctx)
		fmt.Println(string(m.Data))
	}
	// Output:
	// hello, subscribers
	// hello, subscribers
}
