// Package bench is the engine behind the `loft bench` command: it runs loft
// and the raw alternatives (pipes, Unix sockets, TCP loopback, Go channels)
// side by side in one run on one host and reports the results as a table
// and/or JSON lines.
//
// A benchmark is a [Case]. Cases are registered with [Register], normally from
// an init function, and run by [Run], which interleaves rounds (round 1 of
// every case, then round 2, ...) because shared machines are noisy, and prints
// the median of every column over the rounds. The first case runs once more
// before round 1, unreported: the first case a process runs is slow
// throughout (Options.NoWarmup skips this).
//
// Each side of an inter-process case runs in its own OS process. The child
// processes are the running binary itself, re-executed with the environment
// variable LOFT_BENCH_ROLE set: a program that runs benchmarks must call
// [MaybeRunChild] first thing in main (and a test package in TestMain), and
// child behaviour is registered with [RegisterRole]. A case starts children
// through [Env.Spawn] or [Env.SpawnFiles]; the harness kills and reaps every
// child when the case ends, whatever the outcome, and kills a case's children
// when the case overruns its time limit, so a hung child cannot hang the run.
//
// Parent and child talk over a line-based control channel: the child's stdin
// and stdout. In the child, [ToParent] writes a line and [FromParent] reads
// one; in the parent, [Child.Expect] reads and [Child.Send] writes. The
// child's stderr is kept, and its tail is attached to errors.
//
// The raw baselines registered by this package are:
//
//   - "raw" and "raw-batched" over "pipe", "unix" and "tcp" (127.0.0.1), pattern
//     "oneway": the parent sends length-prefixed messages, one write per
//     message ("raw") or 256 messages per write ("raw-batched"); a child
//     receives them through a bufio.Reader, copies every payload out, checks
//     a sequence number, and reports its count and elapsed time.
//   - "raw" over the same transports, pattern "pingpong": the parent writes
//     size bytes, the child echoes them, the parent reads them back; every
//     round trip is recorded in an HDR histogram.
//   - loft's own "pingpong" over "unix" and "tcp" also times a raw socket
//     ping-pong between the same two processes, in blocks alternating with
//     loft's round trips ([MeasurePaired]), and reports its p50 and p99 in
//     the Result's PairRaw fields: where the kernel puts two processes
//     moves a ping-pong's p50 by a third from one pair to the next, so the
//     ratio within one pair is the steadier comparison.
//   - "go-chan" over "inproc": the same two patterns between two goroutines
//     of one process, for reference.
//
// loft's one-way rows ("loft", and "loft-batched", which sends with
// SendBatch and receives with RecvBatch, 256 messages at a time) are
// compared with "raw" and "raw-batched" of the same transport (the Unix
// socket for shared memory).
package bench
