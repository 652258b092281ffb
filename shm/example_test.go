//go:build linux

package shm_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/loft-ipc/loft/shm"
)

// A region shared by name, with a robust Mutex at offset 0 guarding a
// counter at offset 8. A second process would call shm.Open("example",
// opts) and NewMutex/NewCounter with the same offsets.
func Example() {
	dir, err := os.MkdirTemp("", "loft-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o700)
	opts := &shm.Options{Dir: dir} // nil uses the per-user default directory

	r, err := shm.Create("example", 4096, opts)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	defer shm.Remove("example", opts)

	mu, _ := shm.NewMutex(r, 0)
	hits, _ := shm.NewCounter(r, 8)

	ctx := context.Background()
	switch err := mu.Lock(ctx); err {
	case nil:
	case shm.ErrOwnerDead:
		// The previous holder died mid-update: repair the state, then
		mu.Consistent()
	default:
		log.Fatal(err)
	}
	hits.Add(1)
	mu.Unlock()

	fmt.Println("hits:", hits.Load())
	// Output: hits: 1
}
