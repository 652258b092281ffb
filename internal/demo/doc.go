// Package demo is the tour behind `loft demo`: every message-passing
// pattern of loft, run between real OS processes on this host, each part
// checked and reported on one line.
//
// The parts are:
//
//   - producer-consumer: a child process sends 10,000 messages on a channel
//     to the parent, which checks that they all arrive, in order.
//   - worker pool: three worker processes receive from one channel; the
//     parent sends 300 jobs and checks that each went to exactly one worker.
//   - direct message: the parent sends to a child's inbox by node id and the
//     child answers to the parent's inbox.
//   - pub/sub: two subscriber processes each receive all 100 messages
//     published on a topic.
//   - death: a receiver process is killed with SIGKILL; the parent's next
//     Send fails with loft.ErrPeerGone and Watch reports the receiver down.
//   - at-least-once: a receiver dies holding 100 unacknowledged messages;
//     they are delivered again to a second receiver, and nothing is lost.
//
// The children are the running program itself, started again with the
// arguments ChildCommand, a role and the role's arguments; the program must
// hand those to [RunChild] (the loft CLI does it in a hidden subcommand, a
// test binary in TestMain). [Config.Executable] chooses the program. Parent
// and children share a fresh private runtime directory, passed to the
// children in LOFT_RUNTIME_DIR and removed at the end, so the demo never
// sees or disturbs a user's names. Children report to the parent with lines
// on their stdout; they exit when their stdin closes, when their deadline
// passes, or (on Linux) when the parent dies. Every wait in the parent is
// bounded, and Run kills and reaps every child it started before it returns.
package demo
