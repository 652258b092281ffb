// Package rpc is remote procedure calls over loft: typed Go functions
// registered by a server and called by name, with typed arguments and
// results, from any process that can reach it over any loft transport
// (shared memory, Unix socket, TCP, or the same process).
//
// A server registers procedures of one service and starts:
//
//	srv, _ := rpc.NewServer(node, "calc", rpc.ServerOptions{})
//	rpc.Register(srv, "Add", func(ctx context.Context, a AddReq) (AddResp, error) {
//		return AddResp{Sum: a.A + a.B}, nil
//	})
//	srv.Start(ctx)
//
// A client, in this process or another, calls it by the service's name:
//
//	cli, _ := rpc.Dial(ctx, node, "calc", rpc.ClientOptions{})
//	resp, err := rpc.Call[AddReq, AddResp](ctx, cli, "Add", AddReq{A: 1, B: 2})
//
// or without blocking, with a future:
//
//	f := rpc.Go[AddReq, AddResp](ctx, cli, "Add", AddReq{A: 1, B: 2})
//	resp, err := f.Wait(ctx) // or f.Then(func(AddResp, error) { ... })
//
// or many calls in one message with a Batch (Enqueue, then Send).
//
// # Codecs
//
// Arguments and results are encoded by the service's Codec: CBOR by
// default (decoded with limits on array and map sizes and nesting),
// protobuf messages (Proto), or JSON. Every server also accepts JSON
// whatever its codec, decoded into the registered argument type: that is
// how `loft call calc.Add '{"A":1,"B":2}'` works (Client.CallJSON). A
// server decodes a call's arguments only into the type registered for the
// method called.
//
// # Calls, errors, deadlines
//
// Many calls may be in flight on one client; replies come back in any
// order. The context of a call travels to the server: its deadline becomes
// the handler context's deadline, and cancelling it cancels the handler's
// context (the connection stays). A failed call returns an *Error with a
// Code (the codes of gRPC); errors.Is(err, rpc.NotFound) tests a code,
// errors.As gets the *Error, and local causes are wrapped, so
// errors.Is(err, context.DeadlineExceeded) and errors.Is(err,
// loft.ErrPeerGone) work. A handler that panics fails its call with
// Internal; the server goes on. Servers bound the calls in flight per
// client and the message size (ServerOptions).
//
// # Servers, routing and failure
//
// A server of service S on node N receives on two loft channels: "rpc.S",
// held by every server of S, and "rpc.S@N", its own. A client that finds
// servers by name watches "rpc.S" (loft Watch), and sends each call to the
// direct channel of the server with the fewest of its calls pending. So the
// client knows which server holds each call: when that server dies (even by
// SIGKILL) its pending calls fail at once with Unavailable wrapping
// loft.ErrPeerGone, the others go on, and a cancel follows its call on the
// same channel, so it reaches the server that has the call. A client given
// a URL (tcp://host:port/S) sends to "rpc.S" on that node. Replies come
// back on a private channel of the client, "rpc.reply.NODE.RANDOM"; a
// server answers no other channel.
//
// What is not detected: a reply lost while its server lives on (the
// server's connection back to the client broke, so the reply could not be
// sent) leaves the call pending until its context ends. Give calls
// deadlines. With several servers, a call is retried on another server only
// if loft reports it was never sent.
//
// The envelope that carries calls, replies and cancels is specified in
// SPEC.md, next to this file.
//
// # Concurrency
//
// Server and Client are safe for concurrent use. See the comments in
// reader.go for how a client's callers share the receiving of replies, and
// in server.go for the server's worker pool. Lock order: Server.mu and
// Client.mu are leaves, except that they are held while sending on a
// buffered channel that never blocks; no loft call is made while holding
// either.
package rpc
