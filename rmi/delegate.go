package rmi

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"time"

	"github.com/loft-ipc/loft"
)

// Delegate is the runtime half of a proxy: a reference to an object that
// lives in another node (its home), or a promise of one (the result of a
// pipelined call that has not returned yet). Typed proxies embed
// *Delegate; users reach it with Release, Retain, Watch and DelegateOf.
type Delegate struct {
	ep   *Endpoint
	peer *peer
	f    *iface

	mu       sync.Mutex
	id       objID
	ok       bool          // id is known
	err      error         // a promise that failed
	done     chan struct{} // promises: made by a waiter (target), closed when resolved or failed
	callID   uint64        // promises: the call whose answer this is
	users    int           // promises: calls being sent that target callID
	finSent  bool
	owned    bool // counted in Stats.Delegates, has a finalizer
	borrowed bool // an argument of a call being served
	retained bool
	released bool
}

// holder is implemented by every proxy that embeds *Delegate.
type holder interface{ delegate() *Delegate }

func (d *Delegate) delegate() *Delegate { return d }

func newDelegate(ep *Endpoint, p *peer, f *iface, id objID, borrowed bool) *Delegate {
	d := &Delegate{ep: ep, peer: p, f: f, id: id, ok: true, borrowed: borrowed}
	if !borrowed {
		d.own()
	}
	return d
}

func (d *Delegate) own() {
	d.owned = true
	d.ep.live.Add(1)
	runtime.SetFinalizer(d, (*Delegate).finalize)
}

func (d *Delegate) finalize() {
	d.mu.Lock()
	rel := !d.released && d.owned
	d.released = true
	id, ok := d.id, d.ok
	d.mu.Unlock()
	if !rel {
		return
	}
	d.ep.leaked.Add(1)
	d.ep.live.Add(-1)
	if ok {
		d.ep.queueCtl(d.peer, &id, 0, 0)
	}
}

// Peer returns the node id of the object's home.
func (d *Delegate) Peer() string { return d.peer.id }

// Release gives the reference back: the home drops its export once no
// reference of this peer is left. Calls on d fail afterwards with
// ErrReleased. Releasing twice is harmless. A borrowed argument that was
// not retained needs no Release.
func (d *Delegate) Release() {
	d.mu.Lock()
	if d.released {
		d.mu.Unlock()
		return
	}
	d.released = true
	owned, id, ok := d.owned, d.id, d.ok
	d.mu.Unlock()
	if !owned {
		return
	}
	runtime.SetFinalizer(d, nil)
	d.ep.live.Add(-1)
	if !ok {
		return // a promise: released when it resolves (resolve)
	}
	d.ep.queueCtl(d.peer, &id, 0, 0) // sent with the next message to the peer, or soon

}

// Retain keeps a delegate received as an argument beyond the call that
// brought it: the caller then keeps its export, and this side owns the
// delegate (Release it, or the finalizer does and counts a leak). Call it
// before the method returns; it fails afterwards.
func (d *Delegate) Retain() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.released {
		return ErrReleased
	}
	if d.borrowed && !d.retained {
		d.retained = true
		d.owned = true
		d.ep.live.Add(1)
		runtime.SetFinalizer(d, (*Delegate).finalize)
	}
	return nil
}

// endBorrow ends the loan of an argument delegate when its call returns;
// it reports whether the method retained it.
func (d *Delegate) endBorrow() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.retained {
		return true
	}
	d.released = true
	return false
}

// Wait waits until a promise resolves and returns its error; for a
// resolved delegate it returns nil at once.
func (d *Delegate) Wait(ctx context.Context) error {
	_, err := d.target(ctx)
	return err
}

// target returns the object id, waiting for a promise to resolve.
func (d *Delegate) target(ctx context.Context) (objID, error) {
	d.mu.Lock()
	id, ok, err := d.id, d.ok, d.err
	if !ok && err == nil && d.done == nil {
		d.done = make(chan struct{})
	}
	done := d.done
	d.mu.Unlock()
	if ok || err != nil {
		return id, err
	}
	// Say that this waits for the call's reply: the call may still be held
	// here (it goes now, with this), and its reply may be held by a chain
	// in the home (it comes now).
	d.peer.send(ctx, &wmsg{K: kCtl, P: d.callID})
	d.ep.ensureReader() // the reply may come when no caller reads
	if cc := ccOf(ctx); cc != nil {
		t0 := monoNow()
		defer func() { cc.awaited.Add(monoNow() - t0) }() // (see call)
	}
	select {
	case <-done:
	case <-doneOf(ctx):
		return id, ctx.Err()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.id, d.err
}

// resolve settles a promise (called once, by the reader or peerGone).
func (d *Delegate) resolve(id objID, err error) {
	d.mu.Lock()
	if d.ok || d.err != nil {
		d.mu.Unlock()
		return
	}
	if err != nil {
		d.err = err
	} else {
		d.id, d.ok = id, true
	}
	if d.done != nil {
		close(d.done)
	}
	fin := d.users == 0 && !d.finSent
	d.finSent = d.finSent || fin
	rel := d.released && d.ok
	d.mu.Unlock()
	if fin {
		d.ep.queueCtl(d.peer, nil, d.callID, 0)
	}
	if rel {
		d.ep.queueCtl(d.peer, &id, 0, 0)
	}
}

func (d *Delegate) resolveFromReply(p *peer, m *wmsg) {
	if m.E != nil {
		d.resolve(objID{}, &RemoteError{Peer: p.id, Method: "(pipelined)", Code: m.E.C, Msg: m.E.M})
		return
	}
	var r wref
	it := m.args()
	if m.nargs() == 0 || decodeRefRaw(it.next(), &r) != nil || len(r.ID) != idLen {
		d.resolve(objID{}, fmt.Errorf("%w: the pipelined call returned no object", ErrNoSuchObject))
		return
	}
	if r.K != refSender {
		d.resolve(objID{}, fmt.Errorf("%w: the pipelined call returned an object of this node; call it without Pipeline", ErrNoSuchObject))
		return
	}
	d.resolve(objID(r.ID), nil)
}

// unuse ends a call's use of a promise as its target.
func (d *Delegate) unuse() {
	d.mu.Lock()
	d.users--
	fin := d.users == 0 && (d.ok || d.err != nil) && !d.finSent
	d.finSent = d.finSent || fin
	d.mu.Unlock()
	if fin {
		d.ep.queueCtl(d.peer, nil, d.callID, 0)
	}
}

type pipeKey struct{}

// Pipeline returns a context under which a call whose first result is a
// remote interface does not wait: it returns at once a promise of that
// result (with a nil error), and calls on the promise do not wait for it
// either: the peer runs them when the first call returns. Such calls leave
// together with the next message to the peer (or from a background
// goroutine if none follows). An error of the first call is the error of
// every call made on the promise (and of Wait).
func Pipeline(ctx context.Context) context.Context { return context.WithValue(ctx, pipeKey{}, true) }

func pipelined(ctx context.Context) bool { b, _ := ctx.Value(pipeKey{}).(bool); return b }

// DelegateOf returns the delegate behind a proxy, or nil if v is not one
// (a local object, or nil).
func DelegateOf(v any) *Delegate {
	if h, ok := v.(holder); ok {
		return h.delegate()
	}
	return nil
}

// Release releases v if it is a delegate (see Delegate.Release).
func Release(v any) {
	if d := DelegateOf(v); d != nil {
		d.Release()
	}
}

// Retain retains v if it is a delegate received as an argument (see
// Delegate.Retain). For a local object it does nothing.
func Retain(v any) error {
	if d := DelegateOf(v); d != nil {
		return d.Retain()
	}
	return nil
}

// Watch reports when the home of delegate v goes away: one Down event,
// delivered after the endpoint has failed the calls and dropped the
// exports of that peer. The channel is closed after it or when ctx ends.
func Watch(ctx context.Context, v any) (<-chan loft.Event, error) {
	d := DelegateOf(v)
	if d == nil {
		return nil, fmt.Errorf("rmi: Watch: %T is not a delegate", v)
	}
	ch := make(chan loft.Event, 1)
	go func() {
		defer close(ch)
		select {
		case <-d.peer.gone:
			ch <- loft.Event{Kind: loft.Down, Name: "node:" + d.peer.id, Node: d.peer.id, At: time.Now(), Err: d.peer.deadErr()}
		case <-ctx.Done():
		case <-d.ep.ctx.Done():
		}
	}()
	return ch, nil
}

// Call0 calls a method with no result but the error. Proxies call it.
func Call0(ctx context.Context, d *Delegate, method string, args ...any) error {
	m, _, err := d.call(ctx, method, args, false)
	if m != nil {
		freeMsg(m)
	}
	return err
}

// Call1 calls a method with one result. Under a Pipeline context, when R
// is a remote interface, it returns a promise at once.
func Call1[R any](ctx context.Context, d *Delegate, method string, args ...any) (R, error) {
	var r R
	m, prom, err := d.call(ctx, method, args, pipelined(ctx))
	if err != nil {
		return r, err
	}
	if prom != nil {
		r, _ = prom.f.newFn(prom).(R)
		return r, nil
	}
	it := m.args()
	err = decodeResult(d, &r, it.next(), 0)
	freeMsg(m)
	if err != nil {
		return r, &CallError{Peer: d.peer.id, Method: method, Err: err}
	}
	return r, nil
}

// Call2 calls a method with two results.
func Call2[R1, R2 any](ctx context.Context, d *Delegate, method string, args ...any) (R1, R2, error) {
	var r1 R1
	var r2 R2
	m, _, err := d.call(ctx, method, args, false)
	if err != nil {
		return r1, r2, err
	}
	it := m.args()
	err = decodeResult(d, &r1, it.next(), 0)
	if err == nil {
		err = decodeResult(d, &r2, it.next(), 1)
	}
	freeMsg(m)
	if err != nil {
		return r1, r2, &CallError{Peer: d.peer.id, Method: method, Err: err}
	}
	return r1, r2, nil
}

// decodeResult decodes result i of a call of d into *r.
func decodeResult[R any](d *Delegate, r *R, raw []byte, i int) error {
	if f := lookupIface(reflect.TypeFor[R]()); f != nil {
		v, _, err := d.ep.decodeRef(d.peer, raw, f, false)
		if err != nil {
			return err
		}
		*r, _ = v.(R)
		return nil
	}
	if err := unmarshalInto(raw, r); err != nil {
		return fmt.Errorf("%w: result %d: %v", ErrBadMessage, i+1, err)
	}
	return nil
}

// call sends one call and waits for its reply, which it returns with as
// many results as the method has, or, when pipe is set and the first
// result is a remote interface, returns a promise of it at once.
func (d *Delegate) call(ctx context.Context, method string, args []any, pipe bool) (*wmsg, *Delegate, error) {
	ep, p := d.ep, d.peer
	fail := func(err error) (*wmsg, *Delegate, error) {
		return nil, nil, &CallError{Peer: p.id, Method: method, Err: err}
	}
	md := d.f.methods[method]
	if md == nil {
		return fail(fmt.Errorf("%w: %s has no method %q", ErrNoSuchMethod, d.f.name, method))
	}
	if len(args) != len(md.in) {
		return fail(fmt.Errorf("rmi: %s takes %d arguments, got %d", method, len(md.in), len(args)))
	}
	var pf *iface
	if pipe && len(md.out) > 0 {
		pf = md.outIface(0)
	}
	if err := p.deadErr(); err != nil {
		return fail(err)
	}
	var abuf [64]byte
	msg := wmsg{K: kCall, ID: ep.nextID.Add(1), M: method, ar: abuf[:0]}
	d.mu.Lock()
	switch {
	case d.released:
		d.mu.Unlock()
		return fail(ErrReleased)
	case d.err != nil:
		err := d.err
		d.mu.Unlock()
		return nil, nil, err
	case d.ok:
		msg.Obj = d.id[:]
	default:
		msg.P = d.callID
		d.users++
		defer d.unuse()
	}
	d.mu.Unlock()
	var pd *pending
	var prom *Delegate
	if pf == nil {
		pd = newPending()
	} else {
		// A promise and its pending entry are one allocation (its reply
		// resolves it: nobody waits on ch).
		pr := &promise{}
		prom, pd = &pr.d, &pr.pd
	}
	undo := func() {
		ep.mu.Lock()
		ep.returnBorrowedLocked(p, pd.borrowed, nil)
		ep.mu.Unlock()
	}
	for i, a := range args {
		var err error
		if f := md.inIface(i); f != nil {
			r, e, err := ep.ref(ctx, p, a, f)
			if err != nil {
				undo()
				return fail(err)
			}
			msg.ar = r.append(msg.ar)
			if e != nil {
				if pd.borrowed == nil {
					pd.borrowed = make([]*export, len(args))
				}
				pd.borrowed[i] = e
			}
		} else if msg.ar, err = appendValue(msg.ar, a); err != nil {
			undo()
			return fail(fmt.Errorf("rmi: encoding argument %d: %v", i+1, err))
		}
		msg.an++
	}
	if dl, ok := ctx.Deadline(); ok {
		msg.TO = max(int64(time.Until(dl)), 1)
	}
	if prom != nil {
		msg.F = fKeep
		prom.ep, prom.peer, prom.f, prom.callID = ep, p, pf, msg.ID
		prom.own()
		pd.prom = prom
		if err := p.post(&msg, pd); err != nil {
			pd.prom = nil
			undo()
			return fail(err)
		}
		ep.callsOut.Add(1)
		return nil, prom, nil // (not pd.prom: the reply may have taken it)
	}
	if err := ep.addPending(p, msg.ID, pd); err != nil {
		undo()
		return fail(err)
	}
	along, err := p.sendAlong(ctx, &msg)
	if err != nil {
		ep.dropPending(p, msg.ID)
		undo()
		return fail(err)
	}
	pd.along = along
	ep.callsOut.Add(1)
	var t0 int64
	cc := ccOf(ctx)
	if cc != nil {
		t0 = monoNow()
	}
	m, err := ep.wait(ctx, p, msg.ID, pd, method)
	if cc != nil {
		// (Served calls waiting for their own calls do not keep others
		// from being read: the waiting caller reads.)
		cc.awaited.Add(monoNow() - t0)
	}
	if err != nil {
		return nil, nil, err
	}
	if m.nargs() != len(md.out) {
		return fail(fmt.Errorf("%w: %d results, want %d", ErrBadMessage, m.nargs(), len(md.out)))
	}
	return m, nil, nil
}

// promise is a promise's delegate with its pending entry: one allocation.
// pd.prom points to d until the reply (or the peer's end) takes it: a
// pointer of an object with a finalizer to itself would keep it alive.
type promise struct {
	d  Delegate // first: SetFinalizer needs the start of the allocation
	pd pending
}

// takeProm returns the promise pd resolves, if any, and forgets it (see
// promise). Called by whoever removed pd from peer.pending.
func (pd *pending) takeProm() *Delegate {
	d := pd.prom
	pd.prom = nil
	return d
}

// wait waits for the reply of call id. If ctx ends first the peer is told
// to cancel the call; the pending entry stays so that the reply still
// settles the references lent to the call.
func (ep *Endpoint) wait(ctx context.Context, p *peer, id uint64, pd *pending, method string) (*wmsg, error) {
	m, err := ep.await(ctx, pd)
	if err != nil {
		ep.queueCtl(p, nil, 0, id)
		return nil, &CallError{Peer: p.id, Method: method, Err: err}
	}
	if m == nil {
		return nil, &CallError{Peer: p.id, Method: method, Err: pd.err}
	}
	freePending(pd) // (the reply came: nothing refers to pd any more)
	if m.E != nil {
		err := &RemoteError{Peer: p.id, Method: method, Code: m.E.C, Msg: m.E.M}
		freeMsg(m)
		return nil, err
	}
	return m, nil
}

// The pending entries of calls that wait for their reply are recycled
// with their channel: the handler of the reply removed the entry from
// peer.pending before sending on ch, and the caller received it, so once
// the reply came nothing refers to the entry. (A caller that gave up
// leaves it in peer.pending, for the reply to settle: not recycled.)
var pendPool = sync.Pool{New: func() any { return &pending{ch: make(chan *wmsg, 1)} }}

func newPending() *pending { return pendPool.Get().(*pending) }

func freePending(pd *pending) {
	if pd.prom != nil || cap(pd.ch) != 1 || len(pd.ch) != 0 {
		return
	}
	*pd = pending{ch: pd.ch}
	pendPool.Put(pd)
}
