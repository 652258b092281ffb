// Package shmconn is a net.Conn and a net.Listener over shared memory: the
// bytes of a connection travel through two single-producer single-consumer
// rings in a memfd mapped by both processes, a pair of eventfds per side
// carries the wake-ups, and a Unix socket next to them carries only the
// rendezvous and passed files, and tells each side when the other dies.
//
// The dialler creates the memfd, seals its size (so the peer can never
// truncate it under the other's feet and cause SIGBUS), maps it, and passes
// it to the listener over the Unix socket with SCM_RIGHTS. There is no name
// in /dev/shm: the memory is freed by the kernel once both processes have
// unmapped it, SIGKILL included.
//
// While both sides are busy no system call is made: the producer publishes
// by storing the ring's tail, the consumer by storing its head. A side with
// nothing to do spins briefly, then sets its "parked" word and waits on its
// eventfd through the Go netpoller (no OS thread is held per waiting
// connection); the other side wakes it only when it sees that
// word set, by adding to the peer's eventfd. A dead peer is noticed when the
// kernel closes its socket.
//
// LAYOUT.md next to this file gives every offset, so that a C or Rust
// program can join.
package shmconn
