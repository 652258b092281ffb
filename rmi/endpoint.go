package rmi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft"
)

const idLen = 16

type objID [idLen]byte

// Options configure an Endpoint. The zero value works.
type Options struct {
	// MaxIncoming bounds the calls from one peer running at once in this
	// endpoint; calls beyond it fail at once with ErrTooManyCalls (the
	// reader never waits, so a full endpoint cannot deadlock a chain).
	// Zero: 4096.
	MaxIncoming int
	// Capacity is the capacity of the endpoint's loft channel. Zero: 1024.
	Capacity int
	// Logger receives debug logs (bad messages). Zero: slog.Default().
	Logger *slog.Logger
}

// Endpoint is the remote-object runtime of one loft node. It receives
// every message of the protocol on the loft channel "rmi.<node id>" and
// sends to the channel "rmi.<peer id>" of each peer, so calls, replies and
// callbacks between two nodes share the one connection loft keeps between
// them.
type Endpoint struct {
	node *loft.Node
	opts Options
	log  *slog.Logger
	recv *loft.Receiver

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	nextID atomic.Uint64
	wake   chan struct{} // send the queued items now
	lazy   *time.Timer   // send what no other message carried (laterLocked)

	leaked   atomic.Uint64
	live     atomic.Int64
	callsIn  atomic.Uint64
	callsOut atomic.Uint64
	handoffs atomic.Uint64 // replies another goroutine received for a waiting caller

	mu        sync.Mutex // leaf: no send, no user code, no other lock taken under it
	closed    bool
	ids       []byte // random bytes for object ids, from crypto/rand
	armed     bool   // lazy is running
	peers     map[string]*peer
	lastPeer  *peer // the peer peer last returned: most messages come from it (peers are never removed)
	nexports  int   // exports, summed over the live peers
	published map[string]pub
	npend     int // pending calls, summed over peers

	rd  reader    // who receives the endpoint's channel (reader.go)
	dls deadlines // of the calls served (deadline.go)
}

type peer struct {
	id      string
	ep      *Endpoint
	gone    chan struct{}
	ctx     context.Context // ends with the peer (peerGone) or the endpoint
	wcancel context.CancelFunc

	smu sync.Mutex
	snd *loft.Sender

	// under ep.mu
	dead     error
	exports  map[objID]*export
	byVal    map[any]*export
	pending  pendTable
	answers  answerTable
	spareAns []*answer           // answers ended by the peer, for reuse (under ep.mu; see newAnswerLocked)
	running  map[uint64]*callCtx // calls being served, but those kept (in answer.run)
	inflight int
	rel      []objID
	fin      []uint64
	can      []uint64
	held     []heldMsg           // replies of a pipelined chain, to ride on the next message
	hbuf     []byte              // the held replies, encoded one after another
	calls    []heldMsg           // pipelined calls, to go before the next message
	cbuf     []byte              // the pipelined calls, encoded one after another
	wanted   map[uint64]struct{} // calls whose reply the peer waits for (see want)

	sbuf []byte // under smu: the loft message being built (loft's Send copies it)
}

// heldMsg is a pipelined call or a held reply waiting to be sent: its
// call id and the size of its encoding in the peer's buffer (cbuf, hbuf).
// (Encoded into one buffer per peer, which the sender takes whole and
// gives back: no allocation per message.)
type heldMsg struct {
	id uint64
	n  int
}

type export struct {
	id   objID
	obj  any // the object (its dynamic value)
	f    *iface
	refs int
	key  any
}

// value returns the object as a value of its remote interface (for
// reflection).
func (e *export) value() reflect.Value { return ifaceValue(e.f.t, e.obj) }

// ifaceValue returns obj as a reflect.Value of interface type t.
func ifaceValue(t reflect.Type, obj any) reflect.Value {
	if obj == nil {
		return reflect.Zero(t)
	}
	v := reflect.New(t).Elem()
	v.Set(reflect.ValueOf(obj))
	return v
}

// pub is a published object.
type pub struct {
	obj any
	f   *iface
}

type pending struct {
	ch       chan *wmsg // the reply (nil: peer gone); nil for a promise, which its reply resolves
	err      error
	borrowed []*export
	prom     *Delegate
	along    int // pipelined calls sent in the message of this call (reader.go's mayLeadLocked)

	// under rd.mu (reader.go)
	tok      chan struct{} // the read token is given to this follower
	promoted bool
}

type answer struct {
	run   *callCtx // the call while it is served (a kept call is in no peer.running: one map entry per call)
	done  bool
	exp   *export
	err   error
	queue []*wmsg
	q1    [1]*wmsg // queue's first array (a chain queues one call per answer)
}

// ChannelName is the loft channel an endpoint of node id receives on.
func ChannelName(nodeID string) string { return "rmi." + nodeID }

// Open starts the remote-object runtime on node. Close it before the node.
func Open(ctx context.Context, node *loft.Node, opts Options) (*Endpoint, error) {
	if opts.MaxIncoming <= 0 {
		opts.MaxIncoming = 4096
	}
	if opts.Capacity <= 0 {
		opts.Capacity = 1024
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default().With("lib", "rmi")
	}
	r, err := node.Receive(ctx, ChannelName(node.ID()), loft.ChannelOptions{Capacity: opts.Capacity, Delivery: loft.AtMostOnce})
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{node: node, opts: opts, log: opts.Logger, recv: r, wake: make(chan struct{}, 1),
		lazy: time.NewTimer(time.Hour), peers: map[string]*peer{}, published: map[string]pub{}}
	ep.lazy.Stop()
	ep.ctx, ep.cancel = context.WithCancel(context.Background())
	ep.rd.init(ep)
	ep.wg.Add(2)
	go ep.bgLoop()
	go ep.ctlLoop()
	return ep, nil
}

// Node returns the endpoint's loft node.
func (ep *Endpoint) Node() *loft.Node { return ep.node }

// Close fails every pending call with ErrClosed, drops every export and
// waits for the endpoint's goroutines, including calls being served.
func (ep *Endpoint) Close() error {
	ep.mu.Lock()
	if ep.closed {
		ep.mu.Unlock()
		return nil
	}
	ep.closed = true
	ps := make([]*peer, 0, len(ep.peers))
	for _, p := range ep.peers {
		ps = append(ps, p)
	}
	ep.mu.Unlock()
	ep.cancel()
	err := ep.recv.Close()
	ep.closeReader()
	ep.stopDeadlines()
	for _, p := range ps {
		ep.peerGone(p, ErrClosed)
	}
	ep.wg.Wait()
	return err
}

// Publish makes obj reachable by name: any peer may Lookup it. This is how
// a first reference is obtained; every other reference is given in calls.
func Publish[T any](ep *Endpoint, name string, obj T) error {
	f := lookupIface(reflect.TypeFor[T]())
	if f == nil {
		return fmt.Errorf("rmi: Publish: %v is not a registered remote interface", reflect.TypeFor[T]())
	}
	ep.mu.Lock()
	ep.published[name] = pub{obj: obj, f: f}
	ep.mu.Unlock()
	ep.ensureReader()
	return nil
}

// Lookup returns a delegate of the object published under name by node
// nodeID. The caller owns it: Release it when done.
func Lookup[T any](ctx context.Context, ep *Endpoint, nodeID, name string) (T, error) {
	var zero T
	f := lookupIface(reflect.TypeFor[T]())
	if f == nil {
		return zero, fmt.Errorf("rmi: Lookup: %v is not a registered remote interface", reflect.TypeFor[T]())
	}
	p, err := ep.peer(nodeID)
	if err != nil {
		return zero, err
	}
	id := ep.nextID.Add(1)
	pd := newPending()
	if err := ep.addPending(p, id, pd); err != nil {
		return zero, &CallError{Peer: nodeID, Method: "Lookup", Err: err}
	}
	if err := p.send(ctx, &wmsg{K: kLookup, ID: id, M: name, I: f.name}); err != nil {
		ep.dropPending(p, id)
		return zero, &CallError{Peer: nodeID, Method: "Lookup", Err: err}
	}
	m, err := ep.wait(ctx, p, id, pd, "Lookup")
	if err != nil {
		return zero, err
	}
	if m.nargs() != 1 {
		return zero, &CallError{Peer: nodeID, Method: "Lookup", Err: ErrBadMessage}
	}
	it := m.args()
	v, _, err := ep.decodeRef(p, it.next(), f, false)
	if err != nil {
		return zero, &CallError{Peer: nodeID, Method: "Lookup", Err: err}
	}
	r, _ := v.(T)
	return r, nil
}

// Stats are counters of an endpoint.
type Stats struct {
	Peers      int    // peers known and alive
	Exports    int    // objects exported, summed over peers
	ExportRefs int    // references held by peers on them
	Delegates  int64  // delegates this endpoint owns and has not released
	Leaked     uint64 // delegates released by the garbage collector (never Released)
	CallsIn    uint64 // calls served
	CallsOut   uint64 // calls made
}

// Stats returns the endpoint's counters.
func (ep *Endpoint) Stats() Stats {
	s := Stats{Delegates: ep.live.Load(), Leaked: ep.leaked.Load(), CallsIn: ep.callsIn.Load(), CallsOut: ep.callsOut.Load()}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for _, p := range ep.peers {
		if p.dead != nil {
			continue
		}
		s.Peers++
		s.Exports += len(p.exports)
		for _, e := range p.exports {
			s.ExportRefs += e.refs
		}
	}
	return s
}

// ExportsTo returns how many objects this endpoint exports to node
// peerID (the export table of that connection).
func (ep *Endpoint) ExportsTo(peerID string) int {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if p := ep.peers[peerID]; p != nil {
		return len(p.exports)
	}
	return 0
}

// peer returns the state of the connection to node id, starting a Watch
// on it the first time.
func (ep *Endpoint) peer(id string) (*peer, error) {
	ep.mu.Lock()
	if ep.closed {
		ep.mu.Unlock()
		return nil, ErrClosed
	}
	if p := ep.lastPeer; p != nil && p.id == id {
		ep.mu.Unlock()
		return p, nil
	}
	p := ep.peers[id]
	if p != nil {
		ep.lastPeer = p
		ep.mu.Unlock()
		return p, nil
	}
	p = &peer{id: id, ep: ep, gone: make(chan struct{}), exports: map[objID]*export{}, byVal: map[any]*export{},
		running: map[uint64]*callCtx{}}
	ep.peers[id] = p
	wctx, wcancel := context.WithCancel(ep.ctx)
	p.ctx, p.wcancel = wctx, wcancel
	ep.wg.Add(1)
	ep.mu.Unlock()
	go func() {
		defer ep.wg.Done()
		ep.watchPeer(wctx, p)
	}()
	return p, nil
}

// watchPeer follows loft's Watch of node p.id until it reports Down and a
// fresh Watch confirms that the node is gone (see gone); then the peer is
// given up. It returns when ctx ends.
func (ep *Endpoint) watchPeer(ctx context.Context, p *peer) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		ev, err := ep.node.Watch(wctx, "node:"+p.id)
		if err != nil {
			cancel()
			return
		}
		var down error
		for e := range ev {
			if e.Kind == loft.Down {
				down = e.Err
				break
			}
		}
		cancel() // (ends that Watch)
		if down == nil {
			return // ctx ended
		}
		if ep.gone(ctx, p.id) {
			ep.peerGone(p, down)
			return
		}
	}
}

// confirmWait bounds how long gone waits for a fresh Watch to answer; each
// try lasts confirmTry.
const (
	confirmWait = 2 * time.Second
	confirmTry  = 250 * time.Millisecond
)

// gone reports whether node id is gone, asking a fresh Watch. loft reports
// a node Down when a connection to it closes, and a connection may close
// while both nodes live (when two nodes dial each other at once, a node
// may close the spare connection after its peer began to use it). A fresh
// Watch reports Down at once for a node that is no longer registered
// (dead, SIGKILL included, or closed) and Up once it reached the node; one
// that does neither (a node dying, not yet unregistered) is replaced by
// another after confirmTry. No answer within confirmWait counts as gone.
func (ep *Endpoint) gone(ctx context.Context, id string) bool {
	for start := time.Now(); time.Since(start) < confirmWait; {
		tctx, cancel := context.WithTimeout(ctx, confirmTry)
		ev, err := ep.node.Watch(tctx, "node:"+id)
		if err != nil {
			cancel()
			return true
		}
		var e loft.Event
		for e = range ev {
			break
		}
		cancel()
		switch {
		case e.Kind == loft.Up:
			return false
		case e.Kind == loft.Down || ctx.Err() != nil:
			return true
		}
	}
	return true
}

func (ep *Endpoint) addPending(p *peer, id uint64, pd *pending) error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if p.dead != nil {
		return p.dead
	}
	p.pending.put(id, pd)
	ep.npend++
	return nil
}

func (ep *Endpoint) dropPending(p *peer, id uint64) {
	ep.mu.Lock()
	if p.pending.take(id) != nil {
		ep.npend--
	}
	ep.mu.Unlock()
}

// peerGone drops everything of a peer that died, closed, or with which
// the endpoint closed: exports, answers, pending calls (failed), running
// calls (cancelled).
func (ep *Endpoint) peerGone(p *peer, cause error) {
	ep.mu.Lock()
	if p.dead != nil {
		ep.mu.Unlock()
		return
	}
	if errors.Is(cause, ErrClosed) {
		p.dead = fmt.Errorf("%w: %w", ErrClosed, ErrPeerGone)
	} else {
		p.dead = fmt.Errorf("%w: node %s: %v", ErrPeerGone, p.id, cause)
	}
	ep.nexports -= len(p.exports)
	pend, run := p.pending.all(), make([]*callCtx, 0, len(p.running))
	for _, c := range p.running {
		run = append(run, c)
	}
	for _, a := range p.answers.all() {
		if a.run != nil {
			run = append(run, a.run)
		}
	}
	ep.npend -= p.pending.n
	p.pending = pendTable{}
	p.exports, p.byVal, p.running = nil, nil, nil
	p.answers = answerTable{}
	p.rel, p.fin, p.can, p.held, p.calls, p.hbuf, p.cbuf = nil, nil, nil, nil, nil, nil, nil
	dead := p.dead
	ep.mu.Unlock()
	close(p.gone)
	if p.wcancel != nil {
		p.wcancel()
	}
	for _, c := range run {
		c.cancel(context.Canceled)
	}
	for _, pd := range pend {
		pd.err = dead
		if prom := pd.takeProm(); prom != nil {
			prom.resolve(objID{}, dead)
		} else {
			pd.ch <- nil
		}
	}
	ep.interruptLeader()
	p.smu.Lock()
	if p.snd != nil {
		p.snd.Close()
	}
	p.smu.Unlock()
}

func (p *peer) deadErr() error {
	select {
	case <-p.gone:
		p.ep.mu.Lock()
		defer p.ep.mu.Unlock()
		return p.dead
	default:
		return nil
	}
}

// send sends m to the peer with what waits for the next message to it:
// first the pipelined calls posted before (in order), then m carrying the
// control items queued for the peer (releases, finished answers, cancels),
// then the replies held for it; in one loft message when they fit. Sends
// to one peer are serialized under p.smu, so an item or a call queued
// before a message is built travels with it or before it. m may be an
// empty control message: then only what waits is sent. m's Rel, Fin and
// Can are set here (the caller leaves them empty).
func (p *peer) send(ctx context.Context, m *wmsg) error {
	_, err := p.sendAlong(ctx, m)
	return err
}

// sendAlong is send, and also returns how many pipelined calls went with
// m (see pending.along).
func (p *peer) sendAlong(ctx context.Context, m *wmsg) (int, error) {
	if err := p.deadErr(); err != nil {
		return 0, err
	}
	p.smu.Lock()
	defer p.smu.Unlock()
	if p.snd == nil {
		s, err := p.ep.node.Sender(ctx, ChannelName(p.id))
		if err != nil {
			return 0, err
		}
		p.snd = s
	}
	p.ep.mu.Lock()
	// (Slices of the arrays of p.rel, p.fin and p.can: later appends to
	// what is left of them write only past these.)
	relAll, finAll := p.rel, p.fin // (given back for reuse after the send)
	n := min(len(p.rel), maxRefBatch/3)
	m.rel, p.rel = p.rel[:n:n], p.rel[n:]
	n = min(len(p.fin), maxRefBatch/3)
	m.Fin, p.fin = p.fin[:n:n], p.fin[n:]
	n = min(len(p.can), maxRefBatch/3)
	m.Can, p.can = p.can[:n:n], p.can[n:]
	calls, cbuf, held, hbuf := p.calls, p.cbuf, p.held, p.hbuf
	p.calls, p.cbuf, p.held, p.hbuf = nil, nil, nil, nil
	more := len(p.rel)+len(p.fin)+len(p.can) > 0
	p.ep.mu.Unlock()
	if more {
		p.ep.kick()
	}
	self := m.K != kCtl || m.P != 0 || len(m.Rel)+len(m.rel)+len(m.Fin)+len(m.Can) > 0
	count := len(calls) + len(held) + btoi(self)
	// Build the loft message in sbuf: 3 bytes for the batch's head, then
	// the calls, m and the replies.
	b := append(p.sbuf[:0], 0, 0, 0)
	b = append(b, cbuf...)
	mEnd := len(b)
	if self {
		b = appendMsg(b, m)
	}
	mLen := len(b) - mEnd
	b = append(b, hbuf...)
	var sent int
	var err error
	if count <= maxBatch && len(b) <= batchBytes+3 {
		// One loft message (the usual case).
		start := 3
		switch {
		case count == 1:
		case count < 24:
			start = 2
			b[2] = 0x80 | byte(count)
		default:
			start = 1
			b[1], b[2] = 0x98, byte(count)
		}
		if count > 0 {
			err = p.snd.Send(ctx, b[start:])
			if err != nil && errors.Is(err, loft.ErrPeerGone) && p.reattached(ctx) {
				// The connection closed under a live peer: send it again.
				err = p.snd.Send(ctx, b[start:])
			}
		}
		if err == nil {
			sent = count
		}
	} else {
		// Several loft messages: the messages one by one.
		enc := make([][]byte, 0, count)
		off := 3
		for _, c := range calls {
			enc = append(enc, b[off:off+c.n])
			off += c.n
		}
		if self {
			enc = append(enc, b[mEnd:mEnd+mLen])
		}
		off = mEnd + mLen
		for _, r := range held {
			enc = append(enc, b[off:off+r.n])
			off += r.n
		}
		sent, err = p.sendAll(ctx, enc)
		if err != nil && errors.Is(err, loft.ErrPeerGone) && p.reattached(ctx) {
			// The connection closed under a live peer: send the rest again.
			var n int
			n, err = p.sendAll(ctx, enc[sent:])
			sent += n
		}
	}
	if cap(b) <= 4*batchBytes {
		p.sbuf = b[:0]
	} else {
		p.sbuf = nil
	}
	if err != nil && sent < len(calls) {
		p.ep.failHeld(p, calls[sent:], err)
	}
	// Give the buffers back for reuse, unless new ones were started or
	// items queued meanwhile.
	p.ep.mu.Lock()
	if p.dead == nil {
		if len(p.rel) == 0 {
			p.rel = relAll[:0]
		}
		if len(p.fin) == 0 {
			p.fin = finAll[:0]
		}
		if p.calls == nil && cap(cbuf) <= 4*batchBytes {
			p.calls, p.cbuf = calls[:0], cbuf[:0]
		}
		if p.held == nil && cap(hbuf) <= 4*batchBytes {
			p.held, p.hbuf = held[:0], hbuf[:0]
		}
	}
	p.ep.mu.Unlock()
	if err != nil && errors.Is(err, loft.ErrPeerGone) {
		p.smu.Unlock()
		p.ep.peerGone(p, err)
		p.smu.Lock()
	}
	return len(calls), err
}

// reattached reports, after a send failed with loft.ErrPeerGone, whether
// the peer still runs (see Endpoint.gone) and the sender is attached to it
// again. Caller holds smu.
func (p *peer) reattached(ctx context.Context) bool {
	if p.ep.gone(ctx, p.id) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, confirmWait)
	defer cancel()
	return p.snd.WaitReceivers(ctx, 1) == nil
}

// sendAll sends the encoded messages enc in as few loft messages as the
// limits allow (maxBatch messages, about batchBytes each), in order, and
// returns how many were sent. Caller holds smu.
func (p *peer) sendAll(ctx context.Context, enc [][]byte) (int, error) {
	sent := 0
	for sent < len(enc) {
		n, size := 1, len(enc[sent])
		for sent+n < len(enc) && n < maxBatch && size+len(enc[sent+n]) <= batchBytes {
			size += len(enc[sent+n])
			n++
		}
		b := enc[sent]
		if n > 1 {
			b = appendBatch(make([]byte, 0, size+3), enc[sent:sent+n])
		}
		if err := p.snd.Send(ctx, b); err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// post queues pipelined call m, whose pending entry is pd, to go before
// the next message to p, and has the control loop send it if no other
// message does first: calls made one after another on promises travel
// together.
func (p *peer) post(m *wmsg, pd *pending) error {
	p.ep.mu.Lock()
	if p.dead != nil {
		p.ep.mu.Unlock()
		return p.dead
	}
	p.pending.put(m.ID, pd)
	p.ep.npend++
	n := len(p.cbuf)
	p.cbuf = appendMsg(p.cbuf, m)
	p.calls = append(p.calls, heldMsg{id: m.ID, n: len(p.cbuf) - n})
	p.ep.laterLocked()
	p.ep.mu.Unlock()
	p.ep.readSoon()
	return nil
}

// failHeld fails the pipelined calls whose sending failed.
func (ep *Endpoint) failHeld(p *peer, calls []heldMsg, err error) {
	for _, c := range calls {
		ep.mu.Lock()
		pd := p.pending.take(c.id)
		if pd != nil {
			ep.npend--
			ep.returnBorrowedLocked(p, pd.borrowed, nil)
		}
		ep.mu.Unlock()
		if pd == nil {
			continue
		}
		pd.err = err
		if prom := pd.takeProm(); prom != nil {
			prom.resolve(objID{}, err)
		} else {
			pd.ch <- nil
		}
	}
}

// kick makes the control loop send the queued items now.
func (ep *Endpoint) kick() {
	select {
	case ep.wake <- struct{}{}:
	default:
	}
}

// Queued items wait for another message to ride on; if none comes, the
// control loop sends them after ctlDelay: releases and finished answers,
// which nobody waits for; pipelined calls, which are sent at once when
// something waits for their answer (Delegate.target); and replies held by
// a pipelined chain, which go at once when the caller says it waits for
// one of them (a control message naming the call in P, see want). The one
// timer is armed only when it is not already, and is left to fire, never
// stopped. Arming a timer is not free: when it is the earliest of its P it
// wakes a thread (the netpoller's, or a new spinning one), and arming one
// per chain (then stopping it when the chain's last reply carried the
// others) cost a thread wake-up per chain on a 2-core machine. A timer
// firing often keeps one of the runtime's threads in the netpoller with a
// timeout (see loft's conn.readHandBack): held replies used to wait at most
// a millisecond, and that timer, firing every millisecond while chains
// followed each other, made a pipelined chain over a Unix socket about a
// tenth slower.
const ctlDelay = 20 * time.Millisecond

// laterLocked makes the control loop send the items queued for peers
// within ctlDelay, if no other message carried them by then. Caller holds
// ep.mu.
func (ep *Endpoint) laterLocked() {
	if ep.closed || ep.armed {
		return
	}
	ep.armed = true
	ep.lazy.Reset(ctlDelay)
}

// dispatch handles one loft message (a message or a batch) received from
// m.From. self is the pending call of the caller that received it (nil for
// a background reader): its reply needs no hand-off. The last call that
// became runnable is returned in *run for the receiving goroutine to
// serve (see bgLoop and lead); the others start on goroutines of their
// own.
func (ep *Endpoint) dispatch(m loft.Message, self *pending, run *job) {
	bt, err := openBatch(m.Data)
	if err != nil {
		ep.log.Debug("rmi: bad message", "from", m.From, "err", err)
		return
	}
	p, err := ep.peer(m.From)
	if err != nil {
		return
	}
	for {
		msg, err := bt.next()
		if err != nil {
			ep.log.Debug("rmi: bad message", "from", m.From, "err", err)
		}
		if msg == nil {
			break
		}
		if pd := ep.handle(p, msg, run); pd != nil && pd != self {
			ep.handoffs.Add(1)
			// A caller waits for this reply: let it run now, on this
			// thread, before the rest of the batch (replies of a chain
			// that only resolve promises) and before this reader goes
			// back to wait for the next message, which over shared
			// memory means spinning: on a small machine a spinning
			// reader in each process leaves the caller no CPU, and the
			// next message comes only once the caller has run.
			runtime.Gosched()
		}
	}
}

// handle runs on a reader: it only updates tables and starts goroutines
// (and leaves the last runnable call in *run). It returns the pending call
// of a caller waiting for this reply, if any.
func (ep *Endpoint) handle(p *peer, m *wmsg, run *job) *pending {
	if len(m.Rel)+len(m.Fin)+len(m.Can) > 0 {
		ep.control(p, m)
	}
	if m.K == kCtl && m.P != 0 {
		ep.want(p, m.P)
	}
	switch m.K {
	case kReply:
		ep.mu.Lock()
		pd := p.pending.take(m.ID)
		if pd != nil {
			ep.npend--
			ep.returnBorrowedLocked(p, pd.borrowed, m.Ret)
		}
		ep.mu.Unlock()
		if pd == nil {
			freeMsg(m)
			return nil
		}
		if prom := pd.takeProm(); prom != nil {
			prom.resolveFromReply(p, m)
			freeMsg(m)
			return nil
		}
		pd.ch <- m // (the caller frees it)
		return pd
	case kLookup:
		ep.wg.Add(1)
		go ep.serveLookup(p, m)
	case kCall:
		if r := ep.admitRun(p, m); !r.none() {
			if !run.s.none() {
				go ep.runChain(run.p, run.s)
			}
			*run = job{p, r}
		}
	case kCtl:
		freeMsg(m)
	}
	return nil
}

// control applies the releases, finished answers and cancels of m.
func (ep *Endpoint) control(p *peer, m *wmsg) {
	var cancels []*callCtx
	ep.mu.Lock()
	if p.dead == nil {
		for _, b := range m.Rel {
			ep.releaseLocked(p, objID(b))
		}
		for _, id := range m.Fin {
			if a := p.answers.take(id); a != nil && a.run != nil {
				// (A peer ends an answer once it has its reply: not one
				// of a call still served, but if it does, the call
				// stays cancellable.)
				p.running[id] = a.run
			} else if a != nil {
				p.freeAnswerLocked(a)
			}
		}
		for _, id := range m.Can {
			if c := p.running[id]; c != nil {
				cancels = append(cancels, c)
			} else if a := p.answers.get(id); a != nil && a.run != nil {
				cancels = append(cancels, a.run)
			}
		}
	}
	ep.mu.Unlock()
	for _, c := range cancels {
		c.cancel(context.Canceled)
	}
}

// want handles a peer waiting for the reply of its call id (a control
// message naming it in P): a held reply goes at once, now or when the
// chain holds it. Replies held by a chain otherwise wait for the chain's
// last reply, or ctlDelay: no short timer, which would keep one of the
// runtime's threads in the netpoller with a timeout while chains follow
// each other (a tenth of a pipelined chain over a Unix socket).
func (ep *Endpoint) want(p *peer, id uint64) {
	ep.mu.Lock()
	if p.dead != nil {
		ep.mu.Unlock()
		return
	}
	now := false
	for _, r := range p.held {
		now = now || r.id == id
	}
	if !now {
		if p.wanted == nil || len(p.wanted) >= maxWanted {
			// (Ids are never reused: an entry whose reply went already
			// matches nothing, and dropping them all costs at most a
			// wait of ctlDelay.)
			p.wanted = map[uint64]struct{}{}
		}
		p.wanted[id] = struct{}{}
	}
	ep.mu.Unlock()
	if now {
		ep.kick()
	}
}

// maxWanted bounds a peer's wanted set.
const maxWanted = 256

func (ep *Endpoint) releaseLocked(p *peer, id objID) {
	e := p.exports[id]
	if e == nil {
		return
	}
	e.refs--
	if e.refs <= 0 {
		delete(p.exports, id)
		if e.key != nil {
			delete(p.byVal, e.key)
		}
		ep.nexports--
	}
}

func (ep *Endpoint) returnBorrowedLocked(p *peer, lent []*export, kept []uint32) {
	if p.dead != nil {
		return
	}
	for i, e := range lent {
		if e == nil || contains(kept, uint32(i)) {
			continue
		}
		ep.releaseLocked(p, e.id)
	}
}

func contains(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A step is an admitted call to serve (ex set) or to fail with err; the
// zero step is none. (A struct, not a closure: a closure per call is an
// allocation per call.)
type step struct {
	m   *wmsg
	ex  *export
	err error
	c   *Served // the call's state when admitted (registered in peer.running)
}

func (s step) none() bool { return s.m == nil }

// speed returns what is known of how long s takes (method.speed).
func (s step) speed() int32 {
	if s.err != nil || s.ex == nil {
		return speedQuick // (failing a call is quick)
	}
	md := s.ex.f.methods[s.m.M]
	if md == nil {
		return speedQuick // (it fails)
	}
	return md.speed.Load()
}

// runStep serves or fails the call of s, sets *reply to its reply, and
// returns the call queued behind its answer that the same goroutine runs
// next (none if none), and whether it held the reply already (see hold).
// *clock is as for dispatchCall.
func (ep *Endpoint) runStep(p *peer, s step, reply *wmsg, clock *int64) (next step, held bool) {
	if s.err != nil {
		return ep.failCall(p, s.m, s.err, reply), false
	}
	return ep.serve(p, s, reply, clock)
}

// A job is a step of peer p that a reader left for its goroutine to run.
type job struct {
	p *peer
	s step
}

// runChain runs a call and then, on the same goroutine, the calls that
// were pipelined on its answer, one after another. The replies but the
// last are held: they ride on the next message to the peer (the last
// reply, which the caller waits for, or a callback a step makes), so a
// chain answers in one loft message; a caller that waits for one of them
// says so (see want), and otherwise the control loop sends them after
// ctlDelay. Every admitted call counts once in
// ep.wg until its reply is sent or held.
func (ep *Endpoint) runChain(p *peer, run step) {
	var clock int64 // (the end of the last step served: the start of the next, see dispatchCall)
	for {
		var r wmsg // (on the stack: hold and reply encode it)
		next, held := ep.runStep(p, run, &r, &clock)
		if next.none() {
			ep.reply(p, &r)
			freeServed(run.c) // (the reply is encoded: its results, in run.c, are no longer needed)
			freeMsg(run.m)
			ep.wg.Done()
			return
		}
		if !held {
			ep.hold(p, &r)
		}
		freeServed(run.c)
		freeMsg(run.m)
		ep.wg.Done()
		run = next
	}
}

// hold queues reply r to ride on the next message to p.
func (ep *Endpoint) hold(p *peer, r *wmsg) {
	ep.mu.Lock()
	now := ep.holdLocked(p, r)
	ep.mu.Unlock()
	if now {
		ep.kick() // the peer waits for this one: the control loop sends
	}
}

// holdLocked is hold under ep.mu; it reports whether the peer waits for
// r (then the caller kicks the control loop once it released ep.mu).
func (ep *Endpoint) holdLocked(p *peer, r *wmsg) (now bool) {
	if p.dead != nil {
		return false
	}
	n := len(p.hbuf)
	p.hbuf = appendMsg(p.hbuf, r)
	p.held = append(p.held, heldMsg{id: r.ID, n: len(p.hbuf) - n})
	_, now = p.wanted[r.ID]
	if now {
		delete(p.wanted, r.ID)
	} else {
		ep.laterLocked()
	}
	return now
}

// admitRun returns the step that serves m (or fails it), or none when m
// was queued or dropped.
func (ep *Endpoint) admitRun(p *peer, m *wmsg) step {
	ep.mu.Lock()
	s := ep.admitRunLocked(p, m)
	ep.mu.Unlock()
	return s
}

// admitRunLocked is admitRun under ep.mu.
func (ep *Endpoint) admitRunLocked(p *peer, m *wmsg) step {
	if p.dead != nil {
		return step{}
	}
	var a *answer
	if m.F&fKeep != 0 {
		if a = p.answers.get(m.ID); a == nil {
			a = p.newAnswerLocked() // (a call re-admitted after waiting keeps its answer)
			p.answers.put(m.ID, a)
		}
	}
	ex, err := ep.targetLocked(p, m)
	if ex == nil && err == nil { // queued behind a pending answer
		return step{}
	}
	if err == nil && p.inflight >= ep.opts.MaxIncoming {
		err = ErrTooManyCalls
	}
	var c *Served
	if err == nil {
		p.inflight++
		c = newServed()
		c.ep, c.p, c.m = ep, p, m
		// (Live before initCallContext: a cancel counts.)
		if a != nil {
			a.run = c.cc
		} else {
			p.running[m.ID] = c.cc
		}
	}
	ep.wg.Add(1)
	if err != nil {
		return step{m: m, err: err}
	}
	return step{m: m, ex: ex, c: c}
}

// newAnswerLocked returns a zero answer, one the peer ended if any: a
// pipelined chain keeps an answer per call, and they were a tenth of the
// bytes a chain allocated. Caller holds ep.mu.
func (p *peer) newAnswerLocked() *answer {
	if n := len(p.spareAns); n > 0 {
		a := p.spareAns[n-1]
		p.spareAns = p.spareAns[:n-1]
		return a
	}
	return &answer{}
}

// freeAnswerLocked keeps a, taken from p.answers and referred to by
// nothing else (no call of it runs), for reuse. Caller holds ep.mu.
func (p *peer) freeAnswerLocked(a *answer) {
	if len(p.spareAns) < maxSpareAnswers {
		*a = answer{}
		p.spareAns = append(p.spareAns, a)
	}
}

// maxSpareAnswers bounds the answers a peer keeps for reuse.
const maxSpareAnswers = 64

// targetLocked resolves the target of a call: (export, nil), (nil, error),
// or (nil, nil) when the call was queued behind an unresolved answer.
func (ep *Endpoint) targetLocked(p *peer, m *wmsg) (*export, error) {
	if len(m.Obj) > 0 {
		id := objID(m.Obj)
		if e := p.exports[id]; e != nil {
			return e, nil
		}
		if ep.foreignLocked(p, id) {
			return nil, ErrForeignRef
		}
		return nil, ErrNoSuchObject
	}
	a := p.answers.get(m.P)
	if a == nil {
		return nil, fmt.Errorf("%w: no answer %d kept", ErrNoSuchObject, m.P)
	}
	if !a.done {
		if a.queue == nil {
			a.queue = a.q1[:0]
		}
		a.queue = append(a.queue, m)
		return nil, nil
	}
	if a.err != nil {
		return nil, a.err
	}
	if a.exp == nil || p.exports[a.exp.id] != a.exp {
		return nil, fmt.Errorf("%w: answer %d was released", ErrNoSuchObject, m.P)
	}
	return a.exp, nil
}

func (ep *Endpoint) failCall(p *peer, m *wmsg, err error, r *wmsg) step {
	*r = wmsg{K: kReply, ID: m.ID, E: toWire(err)}
	return ep.settle(p, m, nil, err)
}

func toWire(err error) *werr {
	var re *RemoteError
	if errors.As(err, &re) {
		return &werr{C: re.Code, M: re.Msg}
	}
	return &werr{C: codeOf(err), M: err.Error()}
}

// settle records the answer of call m (if kept) and admits the calls
// queued behind it: all but one start on their own goroutines; the one
// returned is for the caller to run next (a pipelined chain then runs on
// one goroutine).
func (ep *Endpoint) settle(p *peer, m *wmsg, ex *export, err error) step {
	if m.F&fKeep == 0 {
		return step{}
	}
	ep.mu.Lock()
	next, others := ep.admitQueuedLocked(p, ep.settleLocked(p, m, ex, err))
	ep.mu.Unlock()
	return ep.startOthers(p, next, others)
}

// settleLocked records the answer of call m, which was kept, and returns
// the calls queued behind it. Caller holds ep.mu.
func (ep *Endpoint) settleLocked(p *peer, m *wmsg, ex *export, err error) []*wmsg {
	if ex == nil && err == nil {
		err = fmt.Errorf("%w: the result is not an object of this node", ErrNoSuchObject)
	}
	return settleAnswerLocked(p.answers.get(m.ID), ex, err)
}

// settleAnswerLocked is settleLocked once the answer a (nil: none) was
// looked up.
func settleAnswerLocked(a *answer, ex *export, err error) []*wmsg {
	if a == nil || a.done {
		return nil
	}
	a.done, a.exp, a.err = true, ex, err
	q := a.queue
	a.queue = nil
	return q
}

// admitQueuedLocked admits the calls q that were queued behind an answer
// (see settle): it returns the last runnable one, for the caller to run
// next, and the others, to start on goroutines of their own once ep.mu is
// released (startOthers). Caller holds ep.mu.
func (ep *Endpoint) admitQueuedLocked(p *peer, q []*wmsg) (next step, others []step) {
	for _, c := range q {
		run := ep.admitRunLocked(p, c)
		if run.none() {
			continue
		}
		if !next.none() {
			others = append(others, next)
		}
		next = run
	}
	return next, others
}

// startOthers starts the steps others on goroutines of their own and
// returns next.
func (ep *Endpoint) startOthers(p *peer, next step, others []step) step {
	for _, s := range others {
		go ep.runChain(p, s)
	}
	return next
}

// reply sends the reply m of a served call. It may wait for credit as long
// as the peer lives and the endpoint is open (a context with a timeout
// would arm a runtime timer per reply: see deadline.go).
func (ep *Endpoint) reply(p *peer, m *wmsg) {
	if len(p.wanted) > 0 { // (read without ep.mu: a hint; the delete is locked)
		ep.mu.Lock()
		delete(p.wanted, m.ID)
		ep.mu.Unlock()
	}
	p.send(p.ctx, m)
}

func (ep *Endpoint) serveLookup(p *peer, m *wmsg) {
	defer ep.wg.Done()
	ep.mu.Lock()
	v, ok := ep.published[m.M]
	ep.mu.Unlock()
	var err error
	if !ok {
		err = fmt.Errorf("%w: %q", ErrNotFound, m.M)
	} else if v.f.name != m.I {
		err = fmt.Errorf("%w: %q is a %s, not a %s", ErrNotFound, m.M, v.f.name, m.I)
	}
	if err != nil {
		ep.reply(p, &wmsg{K: kReply, ID: m.ID, E: toWire(err)})
		return
	}
	raw, _, err := ep.encodeRef(ep.ctx, p, nil, v.obj, v.f)
	if err != nil {
		ep.reply(p, &wmsg{K: kReply, ID: m.ID, E: toWire(err)})
		return
	}
	ep.reply(p, &wmsg{K: kReply, ID: m.ID, ar: raw, an: 1})
}

// serve runs one incoming call (a step of runChain) and sets *r to its
// reply; when a call queued behind its answer runs next, it holds the
// reply (under the lock it takes anyway) and says so.
func (ep *Endpoint) serve(p *peer, s step, r *wmsg, clock *int64) (step, bool) {
	ep.callsIn.Add(1)
	m, c := s.m, s.c
	c.it = m.args()
	c.ar, c.lent = c.buf[:0], c.lentA[:0]
	err := ep.dispatchCall(c, s.ex, clock)
	// Borrowed arguments end with the call unless the method retained them.
	for i, d := range c.lent {
		if d != nil && d.endBorrow() {
			r.Ret = append(r.Ret, uint32(i))
		}
	}
	r.K, r.ID = kReply, m.ID
	if err != nil {
		r.E = toWire(err)
	} else {
		r.ar, r.an = c.ar, c.an
	}
	c.m, c.it = nil, argIter{} // (m is freed after the reply: see runChain)
	ep.mu.Lock()
	var a *answer
	if m.F&fKeep != 0 {
		a = p.answers.get(m.ID)
	}
	if a != nil && a.run == c.cc {
		a.run = nil
	} else if p.running != nil {
		delete(p.running, m.ID)
	}
	p.inflight--
	var next step
	var others []step
	if m.F&fKeep != 0 {
		ex, err := c.resExp, err
		if ex == nil && err == nil {
			err = fmt.Errorf("%w: the result is not an object of this node", ErrNoSuchObject)
		}
		next, others = ep.admitQueuedLocked(p, settleAnswerLocked(a, ex, err))
	}
	now := false
	if !next.none() {
		now = ep.holdLocked(p, r)
	}
	ep.mu.Unlock()
	if now {
		ep.kick()
	}
	return ep.startOthers(p, next, others), !next.none()
}

// dispatchCall runs the method of call c on ex, by its stub or by
// reflection, in the call's context.
//
// *clock is monoNow() at the start of the call, or 0 to read the clock;
// dispatchCall sets it to monoNow() at the call's end. A chain's calls
// run one after another on one goroutine (runChain), so the end of one
// is taken as the start of the next: one clock read per call, not two.
// (What lies between, sending or holding a reply, takes well under a
// microsecond: it counts in the next call's time against inlineSlow and
// makes its deadline, if any, that much earlier, nearer the arrival of
// the chain that brought it.)
func (ep *Endpoint) dispatchCall(c *Served, ex *export, clock *int64) error {
	m := c.m
	md := ex.f.methods[m.M]
	if md == nil {
		return fmt.Errorf("%w: %s has no method %q", ErrNoSuchMethod, ex.f.name, m.M)
	}
	c.md = md
	if m.nargs() != len(md.in) {
		return fmt.Errorf("%w: %s takes %d arguments, got %d", ErrBadMessage, m.M, len(md.in), m.nargs())
	}
	cc := c.cc
	t0 := *clock
	if t0 == 0 {
		t0 = monoNow()
	}
	ep.initCallContext(cc, time.Duration(m.TO), t0)
	defer cc.end()
	var err error
	if md.stub != nil {
		err = callStub(md.stub, cc, ex.obj, c)
		if err == nil && c.an != len(md.out) {
			err = fmt.Errorf("rmi: the stub of %s.%s gave %d results, want %d", ex.f.name, m.M, c.an, len(md.out))
		}
	} else {
		err = ep.callReflect(c, ex, md)
	}
	end := monoNow()
	*clock = end
	sp := int32(speedQuick)
	if cc.asked.Load() || time.Duration(end-t0-cc.awaited.Load()) > inlineSlow {
		sp = speedSlow
	}
	if md.speed.Load() != sp {
		md.speed.Store(sp)
	}
	return err
}

// call calls fn, turning a panic into an error.
func call(fn reflect.Value, in []reflect.Value) (out []reflect.Value, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rmi: method panicked: %v", r)
		}
	}()
	return fn.Call(in), nil
}

// encodeRef appends to b the encoding of obj, a value of remote interface
// f travelling to p (see ref).
func (ep *Endpoint) encodeRef(ctx context.Context, p *peer, b []byte, obj any, f *iface) ([]byte, *export, error) {
	r, e, err := ep.ref(ctx, p, obj, f)
	if err != nil {
		return b, nil, err
	}
	return r.append(b), e, nil
}

// wireRef is how a reference is encoded: kind 0 for nil, else
// {1: kind, 2: id}.
type wireRef struct {
	kind uint8
	id   objID
}

func (r *wireRef) append(b []byte) []byte {
	if r.kind == 0 {
		return append(b, 0xf6)
	}
	return appendRef(b, r.kind, r.id[:])
}

// ref returns the reference that obj, a value of remote interface f
// travelling to p, is: nil, a delegate of p's own object (given back), or
// an object of this node exported to p (one more reference), with its
// export. (Apart from the appending: the escape analysis of the package's
// big cycle of calls would send to the heap any buffer passed in.)
func (ep *Endpoint) ref(ctx context.Context, p *peer, obj any, f *iface) (r wireRef, e *export, err error) {
	if obj == nil {
		return r, nil, nil
	}
	if h, ok := obj.(holder); ok {
		if d := h.delegate(); d != nil && d.peer == p {
			id, err := d.target(ctx)
			if err != nil {
				return r, nil, err
			}
			r.kind, r.id = refReceiver, id
			return r, nil, nil
		}
	}
	var key any
	if reflect.TypeOf(obj).Comparable() {
		key = obj
	}
	ep.mu.Lock()
	if p.dead != nil {
		ep.mu.Unlock()
		return r, nil, p.dead
	}
	if key != nil {
		e = p.byVal[key]
	}
	if e == nil {
		e = &export{obj: obj, f: f, key: key}
		ep.newIDLocked(&e.id)
		p.exports[e.id] = e
		if key != nil {
			p.byVal[key] = e
		}
		ep.nexports++
	}
	e.refs++
	ep.mu.Unlock()
	r.kind, r.id = refSender, e.id
	return r, e, nil
}

// foreignLocked reports whether id was exported to a peer other than p
// (an error path: a scan of the peers, not a table per export). Caller
// holds ep.mu.
func (ep *Endpoint) foreignLocked(p *peer, id objID) bool {
	for _, q := range ep.peers {
		if q != p && q.exports[id] != nil {
			return true
		}
	}
	return false
}

// newIDLocked fills id with random bytes from crypto/rand, read 4 KiB at a
// time. Caller holds ep.mu.
func (ep *Endpoint) newIDLocked(id *objID) {
	if len(ep.ids) < idLen {
		ep.ids = make([]byte, 4096)
		rand.Read(ep.ids)
	}
	copy(id[:], ep.ids)
	clear(ep.ids[:idLen])
	ep.ids = ep.ids[idLen:]
}

// decodeRef turns a reference sent by p into a value of interface f (as
// an any holding the dynamic value, nil for nil): a new delegate for p's
// object, or this node's own object given back.
func (ep *Endpoint) decodeRef(p *peer, raw []byte, f *iface, borrowed bool) (any, *Delegate, error) {
	if len(raw) == 1 && raw[0] == 0xf6 {
		return nil, nil, nil
	}
	var r wref
	if err := decodeRefRaw(raw, &r); err != nil || len(r.ID) != idLen {
		return nil, nil, fmt.Errorf("%w: bad reference", ErrBadMessage)
	}
	id := objID(r.ID)
	switch r.K {
	case refReceiver:
		ep.mu.Lock()
		e := p.exports[id]
		foreign := e == nil && ep.foreignLocked(p, id)
		ep.mu.Unlock()
		if e == nil {
			if foreign {
				return nil, nil, ErrForeignRef
			}
			return nil, nil, ErrNoSuchObject
		}
		if e.f != f {
			if t := reflect.TypeOf(e.obj); !t.Implements(f.t) {
				return nil, nil, fmt.Errorf("%w: object is a %v, not a %v", ErrBadMessage, t, f.t)
			}
		}
		return e.obj, nil, nil
	case refSender:
		d := newDelegate(ep, p, f, id, borrowed)
		return f.newFn(d), d, nil
	}
	return nil, nil, fmt.Errorf("%w: reference kind %d", ErrBadMessage, r.K)
}

// queueCtl adds control items for p. A cancel is sent at once; releases
// and finished answers ride on the next message to p, or are sent by the
// control loop within ctlDelay.
func (ep *Endpoint) queueCtl(p *peer, rel *objID, fin, can uint64) {
	ep.mu.Lock()
	if p.dead != nil {
		ep.mu.Unlock()
		return
	}
	if rel != nil {
		p.rel = append(p.rel, *rel)
	}
	if fin != 0 {
		p.fin = append(p.fin, fin)
	}
	if can != 0 {
		p.can = append(p.can, can)
	}
	now := can != 0 || len(p.rel)+len(p.fin) >= maxRefBatch/3
	ep.laterLocked()
	ep.mu.Unlock()
	if now {
		ep.kick()
	}
}

// ctlLoop sends the control items and held replies that no other message
// carried.
func (ep *Endpoint) ctlLoop() {
	defer ep.wg.Done()
	for {
		select {
		case <-ep.ctx.Done():
			ep.lazy.Stop()
			return
		case <-ep.wake:
		case <-ep.lazy.C:
			ep.mu.Lock()
			ep.armed = false
			ep.mu.Unlock()
		}
		var ps []*peer
		ep.mu.Lock()
		for _, p := range ep.peers {
			if p.dead == nil && len(p.rel)+len(p.fin)+len(p.can)+len(p.held)+len(p.calls) > 0 {
				ps = append(ps, p)
			}
		}
		ep.mu.Unlock()
		for _, p := range ps {
			ctx, cancel := context.WithTimeout(ep.ctx, 10*time.Second)
			p.send(ctx, &wmsg{K: kCtl})
			cancel()
		}
	}
}
