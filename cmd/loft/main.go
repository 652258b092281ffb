// Command loft is the command line of the loft inter-process communication
// toolkit: a multi-process demo, sending and receiving messages, listing
// and watching names, and benchmarks. Run `loft --help` for the commands.
package main

import (
	"os"

	"github.com/loft-ipc/loft/bench"
	"github.com/loft-ipc/loft/internal/cli"
)

func main() {
	// A benchmark child process runs its role and exits here, before
	// anything else can write to its stdout.
	bench.MaybeRunChild()
	os.Exit(cli.Main())
}
