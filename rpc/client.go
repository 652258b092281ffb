package rpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft"
)

// ClientOptions configure a Client. The zero value works: CBOR, 256 calls
// in flight, 4 MiB messages.
type ClientOptions struct {
	// Codec must be the service's codec. Zero: CBOR.
	Codec Codec
	// MaxInFlight bounds the calls pending at once; more wait for a slot
	// (or their context). Zero: 256, the default per-client limit of
	// servers (ServerOptions.MaxInFlight), so that a client with default
	// options never has a call refused for being one too many.
	MaxInFlight int
	// MaxMessageSize bounds a call (envelope and arguments) and a reply.
	// Zero: 4 MiB.
	MaxMessageSize int
	// ReplyAddr is the URL of this node as servers reached by URL should
	// dial it back, as in tcp://10.0.0.5:7070. Zero: the node's first TCP
	// address for a tcp:// service URL, its Unix socket for a unix:// one.
	ReplyAddr string
	// Logger receives debug logs. Zero: slog.Default().
	Logger *slog.Logger
}

func (o ClientOptions) normalized() ClientOptions {
	if o.Codec == nil {
		o.Codec = CBOR
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// deathPoll is how often a client with calls pending checks that the
// servers holding them are still attached. Servers found by name are also
// watched (loft Watch), which reports a SIGKILL within milliseconds.
const deathPoll = 5 * time.Millisecond

// Client calls the procedures of one service. Calls go to the servers of
// the service, each to the one with the fewest calls pending from this
// client; replies come back on a private channel of the client's node.
// Many calls may be in flight at once, from any number of goroutines, and
// replies come back in any order. A Client is safe for concurrent use.
type Client struct {
	node      *loft.Node
	service   string
	target    string // URL of the shared channel, or "" to find servers by name
	opts      ClientOptions
	codec     Codec
	codecID   byte
	replyTo   string // where servers send replies: a name or a URL
	reply     *loft.Receiver
	sem       chan struct{}
	nextID    atomic.Uint64
	pollKick  chan struct{}
	badReply  atomic.Uint64
	log       *slog.Logger
	closeOnce sync.Once

	mu          sync.Mutex
	pending     map[uint64]*call
	routes      []*route
	rr          int
	changed     chan struct{} // closed and replaced when routes change
	closed      bool
	sentPending int  // calls sent and not finished: the death poll runs while > 0
	pollActive  bool // the death poll is ticking

	// The reader token; see reader.go.
	readerHeld bool
	bgReading  bool
	followers  []*call
	readCtx    context.Context
	readCancel context.CancelFunc
	bgKick     chan struct{}
	interrupt  func()

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// route is the way to one server. Guarded by Client.mu except s and node.
type route struct {
	node     string // server node id; "" for a URL target
	s        *loft.Sender
	pending  int
	draining bool // the server released the service name: no new calls
	dead     bool
	lost     uint64 // the sender's Lost counter as last seen
}

// call is one call in flight.
type call struct {
	id       uint64
	method   string
	r        *route
	sent     bool
	deadline bool
	fut      bool
	done     chan struct{} // futures: closed; blocking calls: see reader.go
	stop     func() bool   // futures: stops the context watch

	// Guarded by Client.mu; see reader.go.
	finished bool // the outcome is set
	promoted bool // a follower was given the reader token
	woken    bool // a value is waiting in done (blocking calls)
	leading  bool // the caller holds the reader token

	// Set before done is signalled.
	code   Code
	msg    string
	data   []byte
	rcodec byte
	err    error
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call { return callPool.Get().(*call) }

func putCall(cl *call) {
	done := cl.done
	*cl = call{done: done}
	callPool.Put(cl)
}

var bufPool = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 512)) }}

func getBuf() *bytes.Buffer { return bufPool.Get().(*bytes.Buffer) }

func putBuf(b *bytes.Buffer) {
	if b.Cap() > 1<<20 {
		return
	}
	b.Reset()
	bufPool.Put(b)
}

// Dial returns a client of service, reached from node. service is a
// service name ("calc"), found through the name service on this host, or a
// URL naming one server's node: tcp://host:port/calc or
// unix:///path/to/node.sock/calc. For a tcp:// URL the client's node must
// listen on TCP (loft.Options.ListenTCP) so that replies can reach it, or
// ClientOptions.ReplyAddr must say where it can be reached.
//
// Dial does not wait for a server: calls wait for one (bounded by their
// context).
func Dial(ctx context.Context, node *loft.Node, service string, opts ClientOptions) (*Client, error) {
	opts = opts.normalized()
	c := &Client{
		node:     node,
		opts:     opts,
		codec:    opts.Codec,
		codecID:  codecID(opts.Codec),
		sem:      make(chan struct{}, opts.MaxInFlight),
		pollKick: make(chan struct{}, 1),
		bgKick:   make(chan struct{}, 1),
		pending:  map[uint64]*call{},
		changed:  make(chan struct{}),
		log:      opts.Logger.With("lib", "loft-rpc"),
	}
	var rb [6]byte
	rand.Read(rb[:])
	replyName := "rpc.reply." + node.ID() + "." + hex.EncodeToString(rb[:])
	if i := strings.Index(service, "://"); i >= 0 {
		j := strings.LastIndexByte(service, '/')
		if j < i+3 {
			return nil, fmt.Errorf("rpc: %q: want tcp://host:port/SERVICE or unix:///path/node.sock/SERVICE", service)
		}
		c.service = service[j+1:]
		c.target = service[:j+1] + SharedName(c.service)
		back := opts.ReplyAddr
		scheme := service[:i]
		if back == "" {
			for _, a := range node.Addrs() {
				if strings.HasPrefix(a, scheme+"://") {
					back = a
					break
				}
			}
		}
		if back == "" {
			return nil, fmt.Errorf("rpc: calling %s: this node has no %s address for replies: listen on one (loft.Options.ListenTCP) or set ClientOptions.ReplyAddr", service, scheme)
		}
		c.replyTo = strings.TrimSuffix(back, "/") + "/" + replyName
	} else {
		c.service = service
		c.replyTo = replyName
	}
	if err := checkService(c.service); err != nil {
		return nil, err
	}
	if len(c.replyTo) > maxReplyToLen {
		return nil, fmt.Errorf("rpc: reply address %q is longer than %d bytes", c.replyTo, maxReplyToLen)
	}
	r, err := node.Receive(ctx, replyName, loft.ChannelOptions{
		Capacity:       max(1024, opts.MaxInFlight),
		Delivery:       loft.AtMostOnce,
		MaxMessageSize: opts.MaxMessageSize + envelopeSlack,
	})
	if err != nil {
		return nil, fmt.Errorf("rpc: opening the reply channel: %w", err)
	}
	c.reply = r
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.readCtx, c.readCancel = context.WithCancel(c.ctx)
	c.interrupt = func() {
		c.mu.Lock()
		c.interruptLocked()
		c.mu.Unlock()
	}
	if c.target != "" {
		s, err := node.Sender(ctx, c.target)
		if err != nil {
			r.Close()
			c.cancel()
			return nil, fmt.Errorf("rpc: %w", err)
		}
		c.routes = []*route{{s: s}}
	} else {
		ev, err := node.Watch(c.ctx, SharedName(c.service))
		if err != nil {
			r.Close()
			c.cancel()
			return nil, fmt.Errorf("rpc: watching the servers of %q: %w", c.service, err)
		}
		c.wg.Add(1)
		go c.watch(ev)
	}
	c.wg.Add(2)
	go c.bgRead()
	go c.poll()
	return c, nil
}

// Service returns the service name.
func (c *Client) Service() string { return c.service }

// Servers returns the ids of the server nodes the client routes calls to
// now (for a URL target, one empty string once attached).
func (c *Client) Servers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, r := range c.routes {
		if !r.dead && !r.draining {
			ids = append(ids, r.node)
		}
	}
	return ids
}

// Close fails the calls still pending (code Canceled, wrapping
// ErrClientClosed) and releases the reply channel.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		var futs []*call
		for _, cl := range c.pending {
			cl.err = &Error{Code: Canceled, Service: c.service, Method: cl.method, Err: ErrClientClosed}
			if c.completeLocked(cl, nil) {
				futs = append(futs, cl)
			}
		}
		routes := c.routes
		c.routes = nil
		c.interruptLocked()
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		closeFutures(futs)
		for _, r := range routes {
			r.s.Close()
		}
		c.reply.Close()
		c.cancel()
		c.wg.Wait()
	})
	return nil
}

// watch follows the servers of the service.
func (c *Client) watch(ev <-chan loft.Event) {
	defer c.wg.Done()
	for e := range ev {
		switch e.Kind {
		case loft.Up:
			c.addRoute(e.Node)
		case loft.Down:
			c.routeDown(e.Node)
		}
	}
}

func (c *Client) addRoute(node string) {
	c.mu.Lock()
	for _, r := range c.routes {
		if r.node == node && !r.draining && !r.dead {
			c.mu.Unlock()
			return
		}
	}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	s, err := c.node.Sender(c.ctx, DirectName(c.service, node))
	if err != nil {
		c.log.Debug("no route to server", "service", c.service, "node", node, "err", err)
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.Close()
		return
	}
	c.routes = append(c.routes, &route{node: node, s: s})
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// routeDown handles the release of the service name by a server node:
// it gets no new calls; if it is gone already its pending calls fail now,
// else the death poll watches it until its calls are done.
func (c *Client) routeDown(node string) {
	c.mu.Lock()
	var rs []*route
	for _, r := range c.routes {
		if r.node == node && !r.dead {
			r.draining = true
			rs = append(rs, r)
		}
	}
	c.notifyLocked()
	c.mu.Unlock()
	for _, r := range rs {
		c.checkRoute(r)
	}
	c.kickPoll()
}

func (c *Client) kickPoll() {
	select {
	case c.pollKick <- struct{}{}:
	default:
	}
}

// poll checks, while calls are pending, that their servers are attached.
// Once started it ticks until no call has been pending for pollLinger, so
// that a steady stream of calls does not wake it once per call.
func (c *Client) poll() {
	defer c.wg.Done()
	t := time.NewTicker(deathPoll)
	t.Stop()
	defer t.Stop()
	var rs []*route
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.pollKick:
		}
		t.Reset(deathPoll)
		idle := 0
		for {
			c.mu.Lock()
			rs = append(rs[:0], c.routes...)
			if c.sentPending > 0 {
				idle = 0
			} else {
				idle++
			}
			if idle > pollLinger {
				c.pollActive = false
				c.mu.Unlock()
				break
			}
			c.mu.Unlock()
			for _, r := range rs {
				c.checkRoute(r)
			}
			clear(rs)
			select {
			case <-c.ctx.Done():
				return
			case <-t.C:
			case <-c.pollKick:
			}
		}
		t.Stop()
	}
}

// pollLinger is how many idle ticks the death poll waits before it stops.
const pollLinger = 20

// checkRoute fails the sent calls of a route whose server went away, and
// retires a draining route that is dead or done.
func (c *Client) checkRoute(r *route) {
	st := r.s.Stats()
	c.mu.Lock()
	if r.dead {
		c.mu.Unlock()
		return
	}
	gone := st.Receivers == 0 || st.Lost > r.lost
	r.lost = st.Lost
	var futs []*call
	if gone {
		who := r.node
		if who == "" {
			who = c.target
		}
		for _, cl := range c.pending {
			if cl.r == r && cl.sent {
				cl.err = &Error{Code: Unavailable, Service: c.service, Method: cl.method,
					Message: fmt.Sprintf("server %s went away with the call pending", who),
					Err:     loft.ErrPeerGone}
				if c.completeLocked(cl, nil) {
					futs = append(futs, cl)
				}
			}
		}
	}
	retire := r.draining && (st.Receivers == 0 || r.pending == 0)
	if retire {
		r.dead = true
		c.removeRouteLocked(r)
	}
	c.mu.Unlock()
	closeFutures(futs)
	if retire {
		r.s.Close()
	}
}

func (c *Client) removeRouteLocked(r *route) {
	for i, x := range c.routes {
		if x == r {
			c.routes = append(c.routes[:i], c.routes[i+1:]...)
			break
		}
	}
}

// pickLocked returns the live route with the fewest pending calls.
func (c *Client) pickLocked() *route {
	var best *route
	n := len(c.routes)
	for i := range n {
		r := c.routes[(c.rr+i)%n]
		if r.dead || r.draining {
			continue
		}
		if best == nil || r.pending < best.pending {
			best = r
		}
	}
	c.rr++
	return best
}

// finishLocked does the bookkeeping of a call leaving c.pending.
func (c *Client) finishLocked(cl *call) {
	if cl.r != nil {
		cl.r.pending--
	}
	if cl.sent {
		c.sentPending--
	}
	<-c.sem
}

// start sends a call: v encoded with codec (wire id cid) to the least
// loaded server. It returns nil once the call is sent (or finished by
// someone else, such as Close); then await gives its outcome.
func (c *Client) start(ctx context.Context, cl *call, method string, cid byte, codec Codec, v any) error {
	cl.method = method
	select {
	case c.sem <- struct{}{}:
	default:
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return localError(c.service, method, ctx.Err())
		}
	}
	held := true
	defer func() {
		if held {
			<-c.sem
		}
	}()
	var dl int64
	if d, ok := ctx.Deadline(); ok {
		dl = d.UnixNano()
		if dl == 0 {
			dl = 1
		}
		cl.deadline = true
	}
	if len(method) == 0 || len(method) > maxMethodLen {
		return &Error{Code: InvalidArgument, Service: c.service, Method: method, Message: "method name must be 1 to 255 bytes"}
	}
	cl.id = c.nextID.Add(1)
	buf := getBuf()
	defer putBuf(buf)
	buf.Write(appendCall(buf.AvailableBuffer(), cid, cl.id, c.replyTo, method, dl))
	if err := marshalTo(codec, buf, v); err != nil {
		return &Error{Code: Internal, Service: c.service, Method: method, Message: fmt.Sprintf("encoding the arguments with %s: %v", codec.Name(), err), Err: err}
	}
	if buf.Len() > c.opts.MaxMessageSize+envelopeSlack {
		return &Error{Code: ResourceExhausted, Service: c.service, Method: method, Message: fmt.Sprintf("the call is %d bytes, the limit is %d", buf.Len(), c.opts.MaxMessageSize), Err: loft.ErrTooLarge}
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return &Error{Code: Canceled, Service: c.service, Method: method, Err: ErrClientClosed}
		}
		r := c.pickLocked()
		if r == nil {
			ch := c.changed
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return localError(c.service, method, fmt.Errorf("waiting for a server of %q: %w", c.service, ctx.Err()))
			}
		}
		cl.r = r
		r.pending++
		c.pending[cl.id] = cl
		held = false // the call owns the slot now
		c.mu.Unlock()
		err := r.s.Send(ctx, buf.Bytes())
		c.mu.Lock()
		if c.pending[cl.id] != cl {
			// Finished meanwhile (Close, or a reply already).
			c.mu.Unlock()
			return nil
		}
		if err == nil {
			cl.sent = true
			c.sentPending++
			kick := !c.pollActive
			c.pollActive = true
			c.mu.Unlock()
			if kick {
				c.kickPoll()
			}
			return nil
		}
		// Not sent: safe to try another server.
		delete(c.pending, cl.id)
		r.pending--
		held = true
		retry := false
		if errors.Is(err, loft.ErrPeerGone) || errors.Is(err, loft.ErrClosed) {
			if r.node != "" {
				r.draining = true
				retry = ctx.Err() == nil
			}
		}
		c.mu.Unlock()
		if retry {
			c.checkRoute(r)
			continue
		}
		return localError(c.service, method, err)
	}
}

// sendCancel tells the server of cl to cancel it. The cancel follows the
// call on the same sender, so it cannot overtake it.
func (c *Client) sendCancel(cl *call) {
	r := cl.r
	if r == nil || !cl.sent {
		return
	}
	var b [64]byte
	msg := appendCancel(b[:0], cl.id, c.replyTo)
	if err := r.s.TrySend(msg); err == nil || !errors.Is(err, loft.ErrFull) {
		return
	}
	msg = append([]byte(nil), msg...)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		r.s.Send(ctx, msg)
	}()
}

// outcome returns the error of a finished call, or decodes its result.
func (c *Client) outcome(cl *call, codec Codec, cid byte, out any) error {
	if cl.err != nil {
		return cl.err
	}
	if cl.code != OK {
		return &Error{Code: cl.code, Message: cl.msg, Service: c.service, Method: cl.method}
	}
	if cl.rcodec != cid {
		return &Error{Code: Internal, Service: c.service, Method: cl.method, Message: fmt.Sprintf("the reply came in codec %d, the call in %d", cl.rcodec, cid)}
	}
	if err := codec.Unmarshal(cl.data, out); err != nil {
		return &Error{Code: Internal, Service: c.service, Method: cl.method, Message: fmt.Sprintf("decoding the result with %s: %v", codec.Name(), err), Err: err}
	}
	return nil
}

// Call calls method of c's service with req and waits for the result. If
// ctx ends first the call is cancelled on the server too, and Call returns
// an *Error with code Canceled or DeadlineExceeded. ctx's deadline travels
// with the call: the server's handler context ends then as well.
func Call[Req, Resp any](ctx context.Context, c *Client, method string, req Req) (Resp, error) {
	var resp Resp
	cl := getCall()
	if err := c.start(ctx, cl, method, c.codecID, c.codec, req); err != nil {
		putCall(cl)
		return resp, err
	}
	if err := c.await(ctx, cl); err != nil {
		putCall(cl)
		return resp, err
	}
	err := c.outcome(cl, c.codec, c.codecID, &resp)
	putCall(cl)
	return resp, err
}

// rawJSON is a codec of ready-made JSON arguments.
type rawJSON struct{}

func (rawJSON) Name() string                    { return "json" }
func (rawJSON) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawJSON) Unmarshal(b []byte, v any) error { *(v.(*[]byte)) = b; return nil }

// CallJSON calls method with arguments given as JSON and returns the result
// as JSON, whatever the service's codec: the server decodes the arguments
// into the method's registered argument type. This is what `loft call`
// does.
func (c *Client) CallJSON(ctx context.Context, method string, args []byte) ([]byte, error) {
	if !json.Valid(args) {
		return nil, &Error{Code: InvalidArgument, Service: c.service, Method: method, Message: "the arguments are not valid JSON"}
	}
	cl := &call{done: make(chan struct{}, 1)}
	if err := c.start(ctx, cl, method, codecJSON, rawJSONCodec, args); err != nil {
		return nil, err
	}
	if err := c.await(ctx, cl); err != nil {
		return nil, err
	}
	var out []byte
	err := c.outcome(cl, rawJSONCodec, codecJSON, &out)
	return out, err
}

// rawJSONCodec writes []byte arguments as they are, under the JSON id.
var rawJSONCodec Codec = rawJSONWire{}

type rawJSONWire struct{ rawJSON }

func (rawJSONWire) wireID() byte { return codecJSON }
func (rawJSONWire) marshalTo(buf *bytes.Buffer, v any) error {
	buf.Write(v.([]byte))
	return nil
}
func (rawJSONWire) checkType(reflect.Type) error { return nil }

// Watch reports the servers of service on this host as they come (Up)
// and go (Down), like loft's Watch on the service's shared channel name:
// a server killed with SIGKILL is reported within milliseconds. The
// channel is closed when ctx ends.
func Watch(ctx context.Context, node *loft.Node, service string) (<-chan loft.Event, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	return node.Watch(ctx, SharedName(service))
}
