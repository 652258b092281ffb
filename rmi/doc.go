// Package rmi is remote objects over loft: a Go interface declared remote
// is passed by reference between processes. The receiving side gets a
// delegate implementing the same interface, whose calls run in the
// object's home process. Calls nest in both directions without deadlock,
// references are capabilities scoped to one connection, exports are
// reference-counted and dropped when the peer dies, and calls on a result
// that has not returned yet are pipelined.
//
// # Declaring a remote interface
//
// Write an ordinary interface whose methods take a context first and
// return an error last; other parameters and results are CBOR-encoded
// values, or registered remote interfaces (passed by reference):
//
//	type File interface {
//		Read(ctx context.Context) (string, error)
//		Next(ctx context.Context) (File, error)
//	}
//
// Each process registers it with a proxy constructor. The proxy is a
// struct embedding *rmi.Delegate whose methods call Call0/Call1/Call2:
//
//	type fileProxy struct{ *rmi.Delegate }
//	func (p fileProxy) Read(ctx context.Context) (string, error) { return rmi.Call1[string](ctx, p.Delegate, "Read") }
//	func (p fileProxy) Next(ctx context.Context) (File, error)   { return rmi.Call1[File](ctx, p.Delegate, "Next") }
//	func init() { rmi.Register(func(d *rmi.Delegate) File { return fileProxy{d} }, stubs) }
//
// The optional stubs (rmi.Stubs) dispatch incoming calls to an
// implementation without reflection: per method, a function that decodes
// the arguments (rmi.Arg), calls the method and encodes its results
// (rmi.Result). Proxy and stubs are mechanical: cmd/loft-rmigen writes
// them, with the Register call, from a go:generate line next to the
// interfaces:
//
//	//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type File,Dir
//
// The server side needs nothing else: an ordinary implementation is
// called by the stubs, or by reflection for an interface registered
// without them (method sets read once, at Register), and only the methods
// of the interface the object was passed as can be called.
//
// # Endpoints, first references
//
//	ep, _ := rmi.Open(ctx, node, rmi.Options{})
//	rmi.Publish[Dir](ep, "files", myDir)                  // in the server
//	dir, _ := rmi.Lookup[Dir](ctx, ep, serverNodeID, "files") // in a client
//
// Every other reference is obtained as an argument or result of a call.
// An endpoint receives everything on the loft channel "rmi.<node id>" and
// sends to "rmi.<peer id>": calls, replies and callbacks between two nodes
// share the one connection loft keeps between them (shared memory on one
// host, else a Unix socket or TCP).
//
// # Calls in both directions
//
// One goroutine at a time receives the endpoint's channel (it holds the
// read token): a caller waiting for a reply (so a lone call's reply
// reaches its caller with no hand-off between goroutines), else one of a
// pool of background readers. A background reader that received a call
// serves it itself and reads again when it returns; meanwhile nobody
// reads, so that a quick call costs no goroutine wake-up (on a machine
// with an idle core, waking a goroutine wakes a thread: over a Unix socket
// that made a call take twice as long). Reading goes on at once when
// anything could wait for it: a caller waiting for a reply takes the
// token; the served call asking for its context's Done channel (to wait
// for a cancel, or to derive a context) passes it to another background
// reader; so does a call running longer than 10 ms (one waiting on a
// channel for another incoming call, say), and the next call of a method
// whose last call took over 100 µs (not counting the method's own remote
// calls) or asked for Done passes it on before it runs. A caller reading
// for its reply serves an incoming call itself only if its method is
// known to be quick (last call under 100 µs, no Done), keeping the token
// passable the same way (its own call returns once that one has, even if
// its context ended meanwhile); else the call starts on a goroutine of its own
// and runs first (the reply the caller waits for typically needs that
// call's answer). A reader that hands a reply to its waiting caller also
// lets the caller run first: on a small machine, with a reader spinning
// on shared memory in each process, the caller would otherwise wait for a
// core. No lock is held while application code runs. So P may call Q.m(x)
// with x one of P's objects, and m may call x, which runs in P while P
// waits for m, at any depth. Options.MaxIncoming bounds the calls running
// per peer; beyond it calls fail at once with ErrTooManyCalls (the reader
// never waits).
//
// # Lifetime
//
//   - An object passed as an argument is lent for the call: the callee's
//     delegate dies when the method returns, unless the method calls
//     rmi.Retain(x); then the callee owns it and the reply says so.
//   - An object returned as a result is owned by the caller's delegate.
//   - rmi.Release(x) (or Delegate.Release) gives a reference back; the
//     release rides on the next message to that peer, or a background loop
//     sends it about 20 ms later. A delegate dropped without
//     Release is released by its finalizer and counted in Stats().Leaked.
//   - The home counts references per peer and per object (the same object
//     passed twice to one peer has one id and two references). When a peer
//     goes (loft Watch "node:<id>" reports Down, also after SIGKILL, or a
//     send fails with loft.ErrPeerGone, and a fresh Watch confirms it: a
//     connection between two live nodes can close, and a send that failed
//     so is made again) all its exports and kept answers are dropped, its
//     calls being served are cancelled, and calls pending to it fail with
//     an error matching ErrPeerGone (= loft.ErrPeerGone). Later calls on
//     its delegates fail at once. rmi.Watch(ctx, x) reports Down once that
//     cleanup is done.
//
// # Capabilities
//
// Object ids are 128 random bits (crypto/rand), valid only on the
// connection (pair of nodes) they were given on: a call naming an id not
// exported to the calling peer fails with ErrNoSuchObject, or with
// ErrForeignRef when the id was given to another peer. A peer can reach
// only published objects and objects it was given. Peer identity is the
// loft node id of the sending connection (loft checks SO_PEERCRED on Unix
// sockets; rmi trusts loft's Message.From).
//
// # Promise pipelining
//
// Under ctx2 := rmi.Pipeline(ctx), a call whose first result is a remote
// interface returns at once a promise (a delegate whose target is "the
// answer of call N"). Calls on it do not wait for N either. A pipelined
// call is not written alone: it leaves with the next message to that peer
// (typically the call at the end of the chain, which waits), or when
// something waits for the promise (Delegate.Wait, or the promise passed as
// an argument), or else from a background goroutine about 20 ms later. The home queues calls on N until N returns, then runs them
// on the same goroutine, and the replies of the chain travel back in one
// loft message, the last call's first: dir.Open(ctx2, "x") then
// f.Read(ctx) costs about one round trip, in one message each way. An
// error of N fails every call queued on it, and every call made on the
// promise afterwards (Delegate.Wait reports it too).
//
// # References in rpc calls and other messages
//
// Outside remote-object calls (an argument or result of an rpc call, a
// field of a struct, a loft message) a reference travels as an rmi.Ref:
// its home makes one with ExportRef for the node that will use it, which
// turns it into a delegate with ImportRef:
//
//	ref, _ := rmi.ExportRef[Listener](ep, serverNodeID, myListener)
//	rpc.Call[RunReq, RunResp](ctx, cli, "Run", RunReq{Steps: 5, Progress: ref})
//	// in the handler: ci, _ := rpc.CallInfoFrom(ctx) tells the caller's node,
//	// l, _ := rmi.ImportRef[Listener](ep, req.Progress); defer rmi.Release(l)
//
// A Ref is the same capability as any reference: valid only for the node
// it was exported to. Import it once and Release the delegate.
//
// # Limits (not done)
//
//   - References are recognised by themselves only as direct parameters
//     and results of remote-object calls; anywhere else they travel as a
//     Ref, made and turned back by hand (ExportRef, ImportRef).
//   - A delegate passed to a third node is forwarded (the middle node
//     exports its delegate), not handed off; a pipelined result that is the
//     caller's own object fails.
//
// The wire format is in SPEC.md next to this file.
package rmi
