package names_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/loft-ipc/loft/names"
)

// A worker registers itself and binds the channel it receives from; a
// sender finds every live receiver of that channel.
func Example() {
	tmp, err := os.MkdirTemp("", "loft-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	reg, err := names.Open(filepath.Join(tmp, "loft")) // usually names.Open("")
	if err != nil {
		log.Fatal(err)
	}

	// In the worker process:
	lease, err := reg.Register(names.NodeInfo{ID: "worker-1", Addrs: []string{"unix:///run/worker-1.sock"}})
	if err != nil {
		log.Fatal(err)
	}
	if err := lease.Bind("jobs", map[string]string{"kind": "channel"}); err != nil {
		log.Fatal(err)
	}

	// In the sender process:
	holders, err := reg.Lookup("jobs")
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range holders {
		fmt.Println(h.Node.ID, h.Node.Addrs[0], h.Meta["kind"])
	}

	// When the worker closes, exits or is killed, the name goes with it.
	lease.Close()
	holders, _ = reg.Lookup("jobs")
	fmt.Println(len(holders), "holders")
	// Output:
	// worker-1 unix:///run/worker-1.sock channel
	// 0 holders
}
