package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft"
)

// ServerOptions configure a Server. The zero value works: CBOR, 256 calls
// in flight per client, 4 MiB messages.
type ServerOptions struct {
	// Codec encodes arguments and results. Zero: CBOR. JSON is accepted
	// too, whatever the codec.
	Codec Codec
	// MaxInFlight bounds the calls of one client (one reply address)
	// running at once; a call over the limit fails at once with
	// ResourceExhausted. Zero: 256.
	MaxInFlight int
	// MaxConcurrent bounds the calls running at once on this server, all
	// clients together; a call over the limit fails at once with
	// ResourceExhausted. Zero: 8192.
	MaxConcurrent int
	// MaxMessageSize bounds a call's envelope plus arguments, and a reply.
	// A larger reply is replaced by a ResourceExhausted error. Zero: 4 MiB.
	MaxMessageSize int
	// QueueSize is the capacity of the service's channels: how many calls
	// may wait to be dispatched before clients are slowed down. Zero: 1024.
	QueueSize int
	// ReplyTimeout bounds how long the server waits for a new client's
	// reply channel to appear before it gives up on its replies. Zero: 10 s.
	ReplyTimeout time.Duration
	// PeerIdle is how long a client may stay silent before the server drops
	// its connection state (the sender of its replies). Zero: 30 s.
	PeerIdle time.Duration
	// Logger receives logs: malformed envelopes at warning level, panics at
	// error level. Zero: slog.Default().
	Logger *slog.Logger
}

// DefaultMaxMessageSize is the message size limit of clients and servers
// whose options leave it zero.
const DefaultMaxMessageSize = 4 << 20

// envelopeSlack is added to MaxMessageSize for the channel limit, so that
// the limit applies to the payload as users see it.
const envelopeSlack = 2048

func (o ServerOptions) normalized() ServerOptions {
	if o.Codec == nil {
		o.Codec = CBOR
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 8192
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.ReplyTimeout <= 0 {
		o.ReplyTimeout = 10 * time.Second
	}
	if o.PeerIdle <= 0 {
		o.PeerIdle = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Server serves the procedures of one service on a loft node. It receives
// calls on the channel "rpc.SERVICE", which every server of the service
// holds (clients that reach a server by URL use it), and on
// "rpc.SERVICE@NODE", its own, to which clients that find servers by name
// route calls so that they know which server has which call. Several
// servers of one service, in one process or many, share the load.
//
// Register procedures with Register, then Start (or Serve). A Server is
// safe for concurrent use; procedures may be registered while it serves.
//
// A handler runs on the goroutine that received its call, and while it
// runs nobody else receives unless calls wait behind it, its procedure's
// last call took over 100 µs, or it asks for its context's Done channel
// (to wait on it, or to derive a context). A handler that blocks on
// anything else holds up the calls behind it for 10 ms, once: then another
// goroutine starts receiving, and the procedure counts as slow.
type Server struct {
	node    *loft.Node
	service string
	opts    ServerOptions
	codecID byte
	log     *slog.Logger

	regMu   sync.Mutex
	methods atomic.Pointer[map[string]*method]

	mu          sync.Mutex
	started     bool
	closed      bool
	peers       map[string]*peer
	inflight    map[callKey]*callCtx
	running     int
	tombs       map[callKey]time.Time
	directTaken uint64  // messages taken from direct by workers
	pools       []*pool // the workers of direct and shared
	tombList    []callKey
	shared      *loft.Receiver
	direct      *loft.Receiver

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	calls, errs, panics, bad, canceled atomic.Uint64
}

// ServerStats are a server's counters.
type ServerStats struct {
	Calls        uint64 // calls dispatched (each call of a batch counts)
	Errors       uint64 // calls answered with an error
	Panics       uint64 // handlers that panicked
	BadEnvelopes uint64 // messages dropped or refused as malformed
	Canceled     uint64 // calls cancelled by their client
	Running      int    // handlers running now
	Peers        int    // clients known now
	Workers      int    // worker goroutines now, serving a call or waiting for one (see Server)
}

type callKey struct {
	p  *peer
	id uint64
}

// peer is one client, known by its reply address. Guarded by Server.mu.
type peer struct {
	addr     string
	node     string
	s        *loft.Sender
	running  int
	lastUse  time.Time
	created  time.Time
	attached atomic.Bool // a reply went out: the client's channel existed
}

type method struct {
	name      string
	req, resp reflect.Type
	invoke    func(ctx context.Context, codec Codec, payload []byte, out *bytes.Buffer) error
	slow      atomic.Bool // its last call took over slowCall (see pool)
}

var serviceRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$`)

// checkService validates a service name.
func checkService(name string) error {
	if !serviceRE.MatchString(name) || strings.HasPrefix(name, "reply.") {
		return fmt.Errorf("rpc: service name %q: 1 to 100 letters, digits, '.', '_' or '-', not starting with '.' or \"reply.\"", name)
	}
	return nil
}

// NewServer returns a server of service on node. It serves nothing until
// Start or Serve.
func NewServer(node *loft.Node, service string, opts ServerOptions) (*Server, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	opts = opts.normalized()
	s := &Server{
		node:     node,
		service:  service,
		opts:     opts,
		codecID:  codecID(opts.Codec),
		log:      opts.Logger.With("lib", "loft-rpc", "service", service),
		peers:    map[string]*peer{},
		inflight: map[callKey]*callCtx{},
	}
	m := map[string]*method{}
	s.methods.Store(&m)
	return s, nil
}

// Service returns the service name.
func (s *Server) Service() string { return s.service }

// Register registers fn as the procedure method of s's service. Calls
// decode their arguments into a Req with the service's codec (or JSON),
// and the result travels back as a Resp. A handler's context ends when the
// caller cancels, when the call's deadline passes, or when the server
// closes. An error a handler returns reaches the caller with its code if it
// is (or wraps) an *Error, with code Canceled or DeadlineExceeded if it is a
// context error, and with code Unknown otherwise. A panic becomes an error
// with code Internal; the server carries on.
//
// Register fails if the name is taken or invalid (1 to 255 bytes, no '.',
// '/' or spaces, not starting with '_', which is reserved), or if the
// codec cannot carry Req or Resp.
func Register[Req, Resp any](s *Server, name string, fn func(context.Context, Req) (Resp, error)) error {
	if name == "" || len(name) > maxMethodLen || strings.HasPrefix(name, "_") || strings.ContainsAny(name, "./ \t\n") {
		return fmt.Errorf("rpc: method name %q: 1 to %d bytes, no '.', '/' or spaces, not starting with '_'", name, maxMethodLen)
	}
	if fn == nil {
		return fmt.Errorf("rpc: method %q: nil function", name)
	}
	reqT, respT := reflect.TypeFor[Req](), reflect.TypeFor[Resp]()
	for _, t := range []reflect.Type{reqT, respT} {
		if err := checkType(s.opts.Codec, t); err != nil {
			return fmt.Errorf("rpc: method %q: %w", name, err)
		}
	}
	m := &method{
		name: name,
		req:  reqT,
		resp: respT,
		invoke: func(ctx context.Context, codec Codec, payload []byte, out *bytes.Buffer) error {
			var req Req
			if err := codec.Unmarshal(payload, &req); err != nil {
				return &Error{Code: InvalidArgument, Message: fmt.Sprintf("decoding the %s arguments as %s: %v", codec.Name(), reqT, err)}
			}
			resp, err := fn(ctx, req)
			if err != nil {
				return err
			}
			if err := marshalTo(codec, out, resp); err != nil {
				return &Error{Code: Internal, Message: fmt.Sprintf("encoding the %s result as %s: %v", respT, codec.Name(), err)}
			}
			return nil
		},
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	old := *s.methods.Load()
	if _, dup := old[name]; dup {
		return fmt.Errorf("rpc: method %q of service %q registered twice", name, s.service)
	}
	nm := make(map[string]*method, len(old)+1)
	for k, v := range old {
		nm[k] = v
	}
	nm[name] = m
	s.methods.Store(&nm)
	return nil
}

// SharedName returns the channel every server of service receives on.
func SharedName(service string) string { return "rpc." + service }

// DirectName returns the channel of the server of service on node id.
func DirectName(service, node string) string { return "rpc." + service + "@" + node }

// Start binds the service's names and starts serving in the background;
// it returns once clients can find the server. ctx only bounds the start.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return fmt.Errorf("rpc: server %q started twice or closed", s.service)
	}
	s.started = true
	s.mu.Unlock()
	copts := loft.ChannelOptions{
		Capacity:       s.opts.QueueSize,
		Delivery:       loft.AtMostOnce,
		MaxMessageSize: s.opts.MaxMessageSize + envelopeSlack,
	}
	// The direct name first: a client that sees the shared name can
	// route to the direct one at once.
	direct, err := s.node.Receive(ctx, DirectName(s.service, s.node.ID()), copts)
	if err != nil {
		return fmt.Errorf("rpc: serving %q: %w", s.service, err)
	}
	shared, err := s.node.Receive(ctx, SharedName(s.service), copts)
	if err != nil {
		direct.Close()
		return fmt.Errorf("rpc: serving %q: %w", s.service, err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.Lock()
	s.direct, s.shared = direct, shared
	s.mu.Unlock()
	s.wg.Add(1)
	go s.sweep()
	s.mu.Lock()
	for _, r := range []*loft.Receiver{direct, shared} {
		p := &pool{r: r, idle: 1, total: 1}
		s.pools = append(s.pools, p)
		s.wg.Add(1)
		go s.worker(p)
	}
	s.mu.Unlock()
	return nil
}

// Serve starts the server and serves until ctx ends, then closes it. It
// returns ErrServerClosed after a close, or the error of Start.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	s.Close()
	return ErrServerClosed
}

// Shutdown stops taking new calls and closes the server once the calls it
// has are done: it releases the service's shared name at once (so clients
// route new calls to other servers), keeps taking the calls already sent to
// it until it has been quiet for a moment (no call running or queued for
// shutdownQuiet), then closes. If ctx ends first it closes at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	shared, direct := s.shared, s.direct
	s.mu.Unlock()
	if shared == nil {
		return s.Close()
	}
	shared.Close()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	var quietSince time.Time
	for {
		s.mu.Lock()
		st := direct.Stats()
		quiet := s.running == 0 && st.Queued == 0 && st.Taken == s.directTaken
		s.mu.Unlock()
		switch {
		case !quiet:
			quietSince = time.Time{}
		case quietSince.IsZero():
			quietSince = time.Now()
		case time.Since(quietSince) >= shutdownQuiet:
			return s.Close()
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// shutdownQuiet is how long Shutdown waits with nothing to do before it
// closes: enough for clients to see the shared name go.
const shutdownQuiet = 20 * time.Millisecond

// Close stops the server at once: it releases the service's names,
// cancels every running handler, and waits for the handlers to return.
// Calls pending on clients fail with Unavailable.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	shared, direct := s.shared, s.direct
	for _, p := range s.pools {
		if p.wd != nil {
			p.wd.Stop() // (one that fires anyway finds s.closed)
		}
	}
	calls := make([]*callCtx, 0, len(s.inflight))
	for _, c := range s.inflight {
		calls = append(calls, c)
	}
	s.mu.Unlock()
	if shared != nil {
		shared.Close()
	}
	if direct != nil {
		direct.Close()
	}
	for _, c := range calls {
		c.cancelClosing()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.mu.Lock()
	peers := s.peers
	s.peers = map[string]*peer{}
	s.mu.Unlock()
	for _, p := range peers {
		if p.s != nil {
			p.s.Close()
		}
	}
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	r, p := s.running, len(s.peers)
	w := 0
	for _, pl := range s.pools {
		w += pl.total
	}
	s.mu.Unlock()
	return ServerStats{
		Workers:      w,
		Calls:        s.calls.Load(),
		Errors:       s.errs.Load(),
		Panics:       s.panics.Load(),
		BadEnvelopes: s.bad.Load(),
		Canceled:     s.canceled.Load(),
		Running:      r,
		Peers:        p,
	}
}

// pool is the set of workers taking the messages of one channel. A worker
// receives a message and runs its call inline, so a call costs no
// goroutine switch on the server beyond the one from the connection's
// reader. When it takes a call and no other worker waits to receive, it
// starts another first if the pool is busy (a take in the last busyFor
// found messages waiting behind its own: then calls come faster than one
// worker serves them, and over a socket the receiving worker's system
// calls should overlap the serving) or if the call's method is known to be
// slow (its last call took over slowCall, or asked for its context's Done
// channel); otherwise nobody receives while it serves: the handler asking
// for Done starts another worker then (it is about to wait), and a
// watchdog does if the call still runs after inlineFor, so that a handler
// that blocks stops cancels and other calls from being taken for
// inlineFor at most, once. A worker done with a call exits if another
// already waits to receive and the pool is not busy. (Keeping one waiting
// to receive at all times cost a goroutine wake-up per call, and on a
// small machine a thread's: one call at a time over a Unix socket took
// 1.6-1.9x as long, BENCHMARKS.md.) Guarded by Server.mu.
type pool struct {
	r     *loft.Receiver
	idle  int
	total int

	// Under Server.mu.
	inlineN  uint64    // numbers the runs of a worker serving with none idle
	inline   uint64    // the run in progress, 0: none
	inlineAt time.Time // when it started
	wd       *time.Timer
	wdArmed  bool
	busy     int // takes left in busy mode (see worker)
}

// maxIdleWorkers is how many workers of a busy pool may wait to receive;
// a pool that is not busy keeps one (with two, the one that receives a
// call wakes the other, loft.Receiver handing reading on to a waiting
// Recv: a goroutine wake-up per call). busyFor is how many takes a pool
// stays busy after one that found calls waiting behind it.
const (
	maxIdleWorkers = 8
	busyFor        = 64
)

// slowCall is how long a call runs before its method counts as slow: the
// next call of it gets a worker of its own started first. inlineFor is how
// long any call may hold up the calls behind it before the watchdog starts
// another worker.
const (
	slowCall  = 100 * time.Microsecond
	inlineFor = 10 * time.Millisecond
)

// spawnLocked starts a worker for p. Caller holds s.mu.
func (s *Server) spawnLocked(p *pool) {
	p.idle++
	p.total++
	s.wg.Add(1)
	go s.worker(p)
}

// startInlineLocked records that a worker serves a call with no other
// worker waiting, and arms the watchdog. Caller holds s.mu.
func (s *Server) startInlineLocked(p *pool) uint64 {
	p.inlineN++
	p.inline, p.inlineAt = p.inlineN, time.Now()
	if !p.wdArmed {
		p.wdArmed = true
		if p.wd == nil {
			p.wd = time.AfterFunc(inlineFor, func() { s.watchdog(p) })
		} else {
			p.wd.Reset(inlineFor)
		}
	}
	return p.inline
}

// watchdog starts a worker when a call has been served with none waiting
// to receive for inlineFor, and re-arms itself while calls are served so.
func (s *Server) watchdog(p *pool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.wdArmed = false
	if p.inline == 0 || s.closed {
		return
	}
	if age := time.Since(p.inlineAt); age < inlineFor {
		p.wdArmed = true
		p.wd.Reset(inlineFor - age)
		return
	}
	p.inline = 0
	if p.idle == 0 {
		s.spawnLocked(p)
	}
}

// helpSlow is called when a call served by pool p's worker is about to
// take long (its method is known to be slow, or it asked for Done): if no
// other worker waits to receive, one starts.
func (s *Server) helpSlow(p *pool) {
	s.mu.Lock()
	if p.inline != 0 && p.idle == 0 && !s.closed {
		p.inline = 0
		s.spawnLocked(p)
	}
	s.mu.Unlock()
}

func (s *Server) worker(p *pool) {
	defer s.wg.Done()
	for {
		m, err := p.r.Recv(s.ctx)
		queued := err == nil && p.r.Stats().Queued > 0 // (before s.mu: the receiver's lock is not taken under it)
		s.mu.Lock()
		if err != nil {
			p.idle--
			p.total--
			s.mu.Unlock()
			return
		}
		p.idle--
		if p.r == s.direct {
			s.directTaken++
		}
		// Calls waiting behind this one: the pool is busy for a while
		// (busyFor more takes, renewed by every take that finds more).
		if queued {
			p.busy = busyFor
		} else if p.busy > 0 {
			p.busy--
		}
		var run uint64
		if p.idle == 0 && !s.closed {
			if p.busy > 0 {
				s.spawnLocked(p) // busy: keep one receiving while this one serves
			} else {
				run = s.startInlineLocked(p)
			}
		}
		s.mu.Unlock()
		s.dispatch(m, p)
		s.mu.Lock()
		if run != 0 && p.inline == run {
			p.inline = 0
		}
		if p.idle >= maxIdleWorkers || p.idle >= 1 && p.busy == 0 {
			p.total--
			s.mu.Unlock()
			return
		}
		p.idle++
		s.mu.Unlock()
	}
}

// dispatch handles one message: a call (run inline, on pool p's worker),
// a cancel, or a batch (each call on a goroutine of its own).
func (s *Server) dispatch(m loft.Message, p *pool) {
	var e envelope
	err := parseEnvelope(m.Data, &e)
	if err == nil && e.kind == kindBatch {
		err = forEachInBatch(e.id, e.payload, func(b []byte) error {
			var in envelope
			if err := parseEnvelope(b, &in); err != nil {
				s.refuse(&in, m.From, err)
				return nil
			}
			s.handle(&in, m.From, nil)
			return nil
		})
		if err != nil {
			s.refuse(&envelope{}, m.From, err)
		}
		return
	}
	if err != nil {
		s.refuse(&e, m.From, err)
		return
	}
	s.handle(&e, m.From, p)
}

// refuse counts a malformed envelope, and answers it if it got as far as
// a call's reply address.
func (s *Server) refuse(e *envelope, from string, err error) {
	s.bad.Add(1)
	s.log.Warn("malformed envelope", "from", from, "err", err)
	if e.kind == kindCall && replyAllowed(e.replyTo, from) {
		s.reject(string(e.replyTo), from, e.id, &Error{Code: InvalidArgument, Message: strings.TrimPrefix(err.Error(), "rpc: ")})
	}
}

// handle runs envelope e; inline (nil: none) is the pool whose worker runs
// a call on its own goroutine.
func (s *Server) handle(e *envelope, from string, inline *pool) {
	switch e.kind {
	case kindCall:
		s.startCall(e, from, inline)
	case kindCancel:
		s.mu.Lock()
		p := s.peers[string(e.replyTo)]
		var c *callCtx
		if p != nil {
			key := callKey{p, e.id}
			c = s.inflight[key]
			if c == nil {
				// The call is not running: it finished, or another
				// worker took it and has not started it yet.
				s.tombstoneLocked(key)
			}
		}
		s.mu.Unlock()
		if c != nil && c.cancel(context.Canceled, true) {
			s.canceled.Add(1)
		}
	default:
		s.refuse(e, from, badEnv("a %s envelope sent to a server", kindName(e.kind)))
	}
}

func kindName(k byte) string {
	switch k {
	case kindCall:
		return "call"
	case kindReply:
		return "reply"
	case kindCancel:
		return "cancel"
	case kindBatch:
		return "batch"
	}
	return fmt.Sprintf("kind-%d", k)
}

// peerLocked returns the peer of a reply address, creating it.
func (s *Server) peerLocked(addr, node string) (*peer, bool) {
	p := s.peers[addr]
	if p != nil {
		return p, false
	}
	now := time.Now()
	p = &peer{addr: addr, node: node, created: now, lastUse: now}
	s.peers[addr] = p
	return p, true
}

// senderOf returns the sender of p's replies, opening it on first use.
func (s *Server) senderOf(p *peer) (*loft.Sender, error) {
	s.mu.Lock()
	snd := p.s
	s.mu.Unlock()
	if snd != nil {
		return snd, nil
	}
	snd, err := s.node.Sender(s.ctx, p.addr)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if p.s != nil {
		s.mu.Unlock()
		snd.Close()
		return p.s, nil
	}
	if s.closed {
		s.mu.Unlock()
		snd.Close()
		return nil, ErrServerClosed
	}
	p.s = snd
	s.mu.Unlock()
	return snd, nil
}

// tombstoneLocked remembers, for a while, that a call was cancelled before
// it started. Bounded: the oldest are forgotten first.
func (s *Server) tombstoneLocked(k callKey) {
	if s.tombs == nil {
		s.tombs = map[callKey]time.Time{}
	}
	if len(s.tombs) >= maxTombstones {
		for len(s.tombList) > 0 && len(s.tombs) >= maxTombstones/2 {
			delete(s.tombs, s.tombList[0])
			s.tombList = s.tombList[1:]
		}
	}
	s.tombs[k] = time.Now()
	s.tombList = append(s.tombList, k)
}

const maxTombstones = 4096

// replyAllowed reports whether addr is a reply channel of node from: a
// name "rpc.reply.FROM.x", or a URL whose channel is one. A server sends
// replies nowhere else, so a call cannot make it send to someone else's
// channel.
func replyAllowed(addr []byte, from string) bool {
	if i := bytes.LastIndexByte(addr, '/'); i >= 0 {
		addr = addr[i+1:]
	}
	const prefix = "rpc.reply."
	if !bytes.HasPrefix(addr, []byte(prefix)) {
		return false
	}
	rest := addr[len(prefix):]
	return len(rest) > len(from)+1 && string(rest[:len(from)]) == from && rest[len(from)] == '.'
}

// maxPeers bounds the clients a server keeps state for; calls from more
// are dropped until idle ones are swept.
const maxPeers = 16384

// startCall checks a call against the limits and runs its handler, inline
// or on a goroutine of its own.
func (s *Server) startCall(e *envelope, from string, inline *pool) {
	s.calls.Add(1)
	if !replyAllowed(e.replyTo, from) {
		s.bad.Add(1)
		s.log.Warn("call dropped: its reply address is not a reply channel of its sender", "from", from, "reply_to", string(e.replyTo))
		return
	}
	var codec Codec
	switch e.codec {
	case s.codecID:
		codec = s.opts.Codec
	case codecJSON:
		codec = JSON
	}
	m := (*s.methods.Load())[string(e.method)]
	name := "_list"
	if m != nil {
		name = m.name
	}
	var fail *Error
	switch {
	case codec == nil:
		fail = Errorf(Unimplemented, "service %q uses the %s codec (or JSON); the call came in codec %d", s.service, s.opts.Codec.Name(), e.codec)
	case string(e.method) == "_list":
		if e.codec != codecJSON {
			fail = Errorf(InvalidArgument, "_list answers in JSON only")
		}
	case m == nil:
		fail = Errorf(NotFound, "service %q has no method %q", s.service, e.method)
	case e.flags&flagDeadline != 0 && time.Now().UnixNano() >= e.deadline:
		fail = Errorf(DeadlineExceeded, "the deadline passed before the server took the call")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	p, isNew := s.peers[string(e.replyTo)], false
	if p == nil {
		if len(s.peers) >= maxPeers {
			s.mu.Unlock()
			s.bad.Add(1)
			s.log.Warn("call dropped: too many clients", "from", from, "limit", maxPeers)
			return
		}
		p, isNew = s.peerLocked(string(e.replyTo), from)
	}
	p.lastUse = time.Now()
	if isNew {
		// Start attaching to the client's reply channel now; the sender
		// also tells the sweeper whether the client is still there.
		s.mu.Unlock()
		s.senderOf(p)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
	}
	if fail == nil {
		switch {
		case p.running >= s.opts.MaxInFlight:
			fail = Errorf(ResourceExhausted, "more than %d calls in flight from this client", s.opts.MaxInFlight)
		case s.running >= s.opts.MaxConcurrent:
			fail = Errorf(ResourceExhausted, "server busy: %d calls running", s.opts.MaxConcurrent)
		}
	}
	if fail != nil {
		s.mu.Unlock()
		s.reject(p.addr, from, e.id, fail)
		return
	}
	key := callKey{p, e.id}
	if _, dead := s.tombs[key]; dead {
		delete(s.tombs, key)
		s.mu.Unlock()
		s.canceled.Add(1)
		return
	}
	if _, dup := s.inflight[key]; dup {
		s.mu.Unlock()
		s.reject(p.addr, from, e.id, Errorf(InvalidArgument, "call id %d is already running", e.id))
		return
	}
	c := &callCtx{
		base: s.ctx,
		info: CallInfo{Service: s.service, Method: name, Node: from, ReplyTo: p.addr, Codec: codec.Name()},
	}
	if e.flags&flagDeadline != 0 {
		c.deadline = time.Unix(0, e.deadline)
		c.armDeadline()
	}
	s.inflight[key] = c
	p.running++
	s.running++
	s.wg.Add(1)
	s.mu.Unlock()
	if inline != nil {
		if m != nil && m.slow.Load() {
			s.helpSlow(inline)
		}
		c.inline, c.srv = inline, s
		s.run(c, key, m, codec, e.payload)
		return
	}
	go s.run(c, key, m, codec, e.payload)
}

// reject answers a call that will not run, from a goroutine of its own
// (the reply may have to wait for the client's channel).
func (s *Server) reject(addr, from string, id uint64, e *Error) {
	s.errs.Add(1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	p, _ := s.peerLocked(addr, from)
	p.running++
	s.running++
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.done(callKey{p, id}, nil)
		buf := getBuf()
		buf.Write(appendReply(buf.AvailableBuffer(), codecNone, id, e.Code, e.Message))
		s.reply(p, buf)
		putBuf(buf)
	}()
}

// done ends a call's bookkeeping.
func (s *Server) done(key callKey, c *callCtx) {
	s.mu.Lock()
	if c != nil {
		delete(s.inflight, key)
	}
	key.p.running--
	s.running--
	s.mu.Unlock()
	s.wg.Done()
}

// replyHeaderRoom is the room left before a result for its envelope: the
// fixed header, a call id, code 0, an empty message and no capabilities.
const replyHeaderRoom = fixedHeader + 10 + 1 + 1 + 1

var zeroRoom [replyHeaderRoom]byte

// run runs one handler and sends its reply.
func (s *Server) run(c *callCtx, key callKey, m *method, codec Codec, payload []byte) {
	defer s.done(key, c)
	buf := getBuf()
	defer putBuf(buf)
	var err error
	if m == nil { // _list
		err = s.list(buf, key.id)
	} else {
		buf.Write(zeroRoom[:])
		t0 := time.Now()
		err = s.invoke(c, m, codec, payload, buf)
		if slow := c.asked.Load() || time.Since(t0) > slowCall; m.slow.Load() != slow {
			m.slow.Store(slow)
		}
	}
	c.release()
	if c.cancelledByClient() {
		return // nobody waits for the reply
	}
	out := buf.Bytes()
	if err == nil && len(out)-replyHeaderRoom > s.opts.MaxMessageSize {
		err = Errorf(ResourceExhausted, "the result is %d bytes, the limit is %d", len(out)-replyHeaderRoom, s.opts.MaxMessageSize)
	}
	if err != nil {
		s.errs.Add(1)
		code, msg := statusOf(err)
		if c.isClosing() {
			code, msg = Unavailable, fmt.Sprintf("server %s of %q closed with the call running", s.node.ID(), s.service)
		}
		buf.Reset()
		buf.Write(appendReply(buf.AvailableBuffer(), codecNone, key.id, code, msg))
		s.reply(key.p, buf)
		return
	}
	if m == nil {
		s.reply(key.p, buf)
		return
	}
	var h [replyHeaderRoom]byte
	hdr := appendReply(h[:0], codecID(codec), key.id, OK, "")
	start := replyHeaderRoom - len(hdr)
	copy(out[start:], hdr)
	buf.Next(start)
	s.reply(key.p, buf)
}

// invoke calls the handler, turning a panic into an Internal error.
func (s *Server) invoke(c *callCtx, m *method, codec Codec, payload []byte, out *bytes.Buffer) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.panics.Add(1)
			s.log.Error("handler panicked", "method", m.name, "panic", p, "stack", string(debug.Stack()))
			err = Errorf(Internal, "method %q panicked: %v", m.name, p)
		}
	}()
	return m.invoke(c, codec, payload, out)
}

// list writes the _list reply: the service description in JSON.
func (s *Server) list(buf *bytes.Buffer, id uint64) error {
	buf.Write(appendReply(buf.AvailableBuffer(), codecJSON, id, OK, ""))
	return JSON.(wireCodec).marshalTo(buf, s.Describe())
}

// statusOf turns a handler's error into a code and a message.
func statusOf(err error) (Code, string) {
	var e *Error
	if errors.As(err, &e) {
		if e.Message != "" {
			return e.Code, e.Message
		}
		return e.Code, err.Error()
	}
	return CodeOf(err), err.Error()
}

// reply sends a reply envelope to p, dropping p's sender if the client is
// gone.
func (s *Server) reply(p *peer, buf *bytes.Buffer) {
	snd, err := s.senderOf(p)
	if err == nil {
		err = snd.Send(s.ctx, buf.Bytes())
		if err == nil {
			p.attached.Store(true)
			return
		}
	}
	if errors.Is(err, loft.ErrTooLarge) {
		s.log.Warn("reply too large for the client's channel", "client", p.addr, "err", err)
		return
	}
	if s.ctx.Err() == nil {
		s.log.Debug("reply not delivered; dropping the client", "client", p.addr, "err", err)
	}
	s.dropPeer(p)
}

// dropPeer forgets a client: its sender is closed and its running calls
// are cancelled.
func (s *Server) dropPeer(p *peer) {
	s.mu.Lock()
	if s.peers[p.addr] == p {
		delete(s.peers, p.addr)
	}
	snd := p.s
	var calls []*callCtx
	for k, c := range s.inflight {
		if k.p == p {
			calls = append(calls, c)
		}
	}
	s.mu.Unlock()
	for _, c := range calls {
		c.cancel(context.Canceled, true)
	}
	if snd != nil {
		snd.Close()
	}
}

// sweep drops clients that went away, never appeared, or stayed idle.
func (s *Server) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	type cand struct {
		p           *peer
		snd         *loft.Sender
		idle, stale bool
	}
	var cands []cand
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		cands = cands[:0]
		s.mu.Lock()
		for len(s.tombList) > 0 {
			k := s.tombList[0]
			if t, ok := s.tombs[k]; ok && now.Sub(t) < 10*time.Second {
				break
			}
			delete(s.tombs, k)
			s.tombList = s.tombList[1:]
		}
		for _, p := range s.peers {
			cands = append(cands, cand{
				p:     p,
				snd:   p.s,
				idle:  p.running == 0 && now.Sub(p.lastUse) > s.opts.PeerIdle,
				stale: now.Sub(p.created) > s.opts.ReplyTimeout,
			})
		}
		s.mu.Unlock()
		for _, c := range cands {
			live := c.snd != nil && c.snd.Stats().Receivers > 0
			switch {
			case live:
				c.p.attached.Store(true)
				if c.idle {
					s.dropPeer(c.p)
				}
			case c.p.attached.Load(): // its reply channel is gone: so is the client
				s.dropPeer(c.p)
			case c.stale || c.idle: // its reply channel never appeared
				s.dropPeer(c.p)
			}
		}
	}
}
