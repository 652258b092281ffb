package loft

import (
	"context"
	"encoding/binary"
	"fmt"
	"iter"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft/wire"
)

// Receiver takes messages from a channel, a topic or a node's inbox. Several
// receivers of one channel compete: each message goes to one of them. A
// Receiver is safe for concurrent use; concurrent Recv calls each get
// different messages.
type Receiver struct {
	node *Node
	kind string
	name string
	opts ChannelOptions

	mu      sync.Mutex
	q       ring[qitem]
	qn      int // messages queued (a run counts its records)
	waiting int
	wakes   int // waiting Recv calls woken by another reader's delivery (for tests)
	closed  bool
	atts    map[*inAtt]struct{}
	dedup   map[uint64]*dedupState // by sender stream, ExactlyOnce only
	signal  chan struct{}
	done    chan struct{}

	// Reading for itself (see conn.readFrames). Guarded by mu.
	dconn    *conn           // the one conn every attachment is on, if Recv may read it
	dreading *conn           // the conn a Recv is reading now, if any
	dctx     context.Context // that Recv's context
	dint     bool            // that Recv must stop reading and look again
	actx     context.Context // the context with an interrupt registered
	astop    func() bool     // unregisters it
	lastCtx  context.Context // the context of the last Recv that read a conn itself

	// Urgent ACKs written by the goroutine that took the message (see
	// ackInline). Guarded by mu.
	inlineAck bool  // a take is in progress whose caller writes urgent ACKs
	ackConn   *conn // the conn whose flush that caller owns, if any

	// Counters, guarded by mu.
	received   uint64
	taken      uint64
	dropped    uint64
	duplicates uint64
	window     uint64 // credit window per attachment: Capacity / attached senders, at least 1
}

// ReceiverStats are a receiver's counters.
type ReceiverStats struct {
	Received   uint64 // messages that arrived, duplicates included
	Taken      uint64 // messages handed to the application
	Dropped    uint64 // messages dropped by the DropOldest policy
	Duplicates uint64 // redeliveries discarded by ExactlyOnce
	Queued     int    // messages waiting now
	Senders    int    // attached senders now
}

// qitem is a queued message, kept small: From comes from the attachment,
// and the rare files and loans hang off extra. It may also be a run: the
// records of one DATA frame not taken yet, left encoded in data (they were
// checked when the frame came) and decoded one by one as they are taken.
// A stream then costs one queue slot per frame instead of one per message:
// a queue as deep as a large window of messages no longer fits in the
// CPU's cache, and pushing and popping it was a quarter of receiving.
type qitem struct {
	data  []byte
	id    uint64
	att   *inAtt
	extra *qextra
	run   int  // records left in a run; 0 for a single message
	seq   bool // a run of a sequential frame: records are length, bytes; id is the next's
}

// record is one message of a DATA frame, decoded.
type record struct {
	id   uint64
	data []byte
}

type qextra struct {
	files []*os.File
	loan  *loanRef
}

func (it *qitem) fill(m *Message) {
	m.Data, m.From, m.ID = it.data, it.att.remote, it.id
	if it.extra != nil {
		m.Files, m.loan = it.extra.files, it.extra.loan
	}
}

// inAtt is one sender attached to a receiver, seen from the receiver.
type inAtt struct {
	c      *conn
	id     uint32
	r      *Receiver
	stream uint64
	remote string

	// Guarded by r.mu.
	received uint64              // messages arrived on this attachment
	done     uint64              // messages that left the queue: taken, dropped or discarded
	acked    uint64              // messages finished: every one of index < acked (see finishLocked)
	finished map[uint64]struct{} // indices >= acked finished out of order
	limit    uint64              // credit: the sender may send while received < limit
	lastAck  uint64              // acked as of the last urgent ACK
	pubAcked uint64              // acked as of the last counters published for the writer
	gone     bool

	// Read by the conn's writer when it builds an ACK.
	ackTaken  atomic.Uint64
	ackLimit  atomic.Uint64
	ackQueued atomic.Bool   // an ACK is queued and not yet built
	ackUrgent atomic.Bool   // an urgent one is: the writer was called for it
	told      atomic.Uint64 // the credit limit in the last ACK built: what the sender knows, or soon will
	toldTaken atomic.Uint64 // the count of taken messages in the last ACK built
	dirty     bool          // guarded by c.wmu
}

type dedupState struct {
	floor uint64              // every id below floor was seen or is acknowledged
	seen  map[uint64]struct{} // ids at or above floor already delivered
	last  time.Time           // when this stream last attached
}

// dedupKeep is how long the de-duplication state of a sender that went away
// is kept for it to come back (a reconnect) before it is forgotten.
const dedupKeep = 10 * time.Minute

func newReceiver(n *Node, kind, name string, opts ChannelOptions) *Receiver {
	r := &Receiver{
		node:   n,
		kind:   kind,
		name:   name,
		opts:   opts.normalized(),
		atts:   map[*inAtt]struct{}{},
		dedup:  map[uint64]*dedupState{},
		signal: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	r.rewindowLocked()
	return r
}

// Name returns the channel, topic or inbox name.
func (r *Receiver) Name() string { return r.name }

// Options returns the channel's semantics.
func (r *Receiver) Options() ChannelOptions { return r.opts }

// Stats returns the receiver's counters.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ReceiverStats{
		Received:   r.received,
		Taken:      r.taken,
		Dropped:    r.dropped,
		Duplicates: r.duplicates,
		Queued:     r.qn,
		Senders:    len(r.atts),
	}
}

// windowLocked is the credit window of one attachment. Caller holds r.mu.
func (r *Receiver) windowLocked() uint64 { return r.window }

// rewindowLocked recomputes the window when senders come or go.
func (r *Receiver) rewindowLocked() {
	n := max(len(r.atts), 1)
	r.window = uint64(max(r.opts.Capacity/n, 1))
}

// creditLocked recomputes a's credit limit. Caller holds r.mu. It reports
// whether the limit grew.
func (r *Receiver) creditLocked(a *inAtt) bool {
	var lim uint64
	switch {
	case r.opts.Capacity == 0:
		// Synchronous: one credit, and only while a Recv waits.
		if r.waiting > 0 && a.received == a.done {
			lim = a.received + 1
		} else {
			lim = a.limit
		}
	case r.opts.OnFull == DropOldest:
		lim = a.received + r.windowLocked()
	default:
		lim = a.done + r.windowLocked()
	}
	if lim > a.limit {
		a.limit = lim
		return true
	}
	return false
}

// attach adds a sender; it returns the first credit limit.
func (r *Receiver) attach(a *inAtt) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, false
	}
	r.atts[a] = struct{}{}
	r.rewindowLocked()
	if r.opts.Delivery == ExactlyOnce {
		now := time.Now()
		if st := r.dedup[a.stream]; st != nil {
			st.last = now
		}
		for k, st := range r.dedup {
			if now.Sub(st.last) > dedupKeep {
				delete(r.dedup, k)
			}
		}
	}
	r.creditLocked(a)
	a.ackLimit.Store(a.limit)
	a.told.Store(a.limit)
	r.redirectLocked()
	return a.limit, true
}

// redirectLocked works out whether Recv may read for itself: when every
// attachment is on one conn that allows it. A Recv reading another conn is
// told to look again.
func (r *Receiver) redirectLocked() {
	var dc *conn
	for a := range r.atts {
		if dc == nil {
			dc = a.c
		} else if a.c != dc {
			dc = nil
			break
		}
	}
	if dc != nil && !dc.direct {
		dc = nil
	}
	r.dconn = dc
	if r.dreading != nil && r.dreading != dc {
		r.interruptLocked()
	}
}

// interruptLocked stops a Recv reading for itself.
func (r *Receiver) interruptLocked() {
	if r.dreading != nil && !r.dint {
		r.dint = true
		r.dreading.interruptRead()
	}
}

// directDone reports whether a Recv reading for itself should stop.
func (r *Receiver) directDone(ctx context.Context) bool {
	r.mu.Lock()
	done := r.qn > 0 || r.closed || r.dint
	r.mu.Unlock()
	return done || ctx.Err() != nil
}

// watchCtxLocked makes sure that ctx ending interrupts a Recv reading for
// itself under it. The registration is kept for the next Recv with the
// same context, so a loop of Recv calls registers once (unless ctx has a
// deadline: see recv).
func (r *Receiver) watchCtxLocked(ctx context.Context) {
	if ctx.Done() == nil || ctx == r.actx {
		return
	}
	if r.astop != nil {
		r.astop()
	}
	r.actx = ctx
	r.astop = context.AfterFunc(ctx, func() {
		r.mu.Lock()
		if r.dctx == ctx {
			r.interruptLocked()
		}
		r.mu.Unlock()
	})
}

// detach removes a sender whose connection or attachment ended. Its
// messages already queued stay queued.
func (r *Receiver) detach(a *inAtt) {
	r.mu.Lock()
	a.gone = true
	delete(r.atts, a)
	r.rewindowLocked()
	r.redirectLocked()
	r.mu.Unlock()
}

// deliver queues the messages of one DATA frame (seq: a sequential one,
// see wire.FlagSeq). It runs on the conn's reader goroutine.
func (r *Receiver) deliver(a *inAtt, floor uint64, d *wire.Decoder, seq bool) error {
	max := uint64(r.opts.MaxMessageSize)
	p := d.Rest()
	var next uint64
	if seq {
		id, n := binary.Uvarint(p)
		if n <= 0 {
			return fmt.Errorf("%w: bad first message id in a DATA frame for %q", wire.ErrMalformed, r.name)
		}
		p, next = p[n:], id
	}
	if r.opts.Delivery != ExactlyOnce && r.opts.OnFull != DropOldest {
		return r.deliverRun(a, p, max, seq, next)
	}
	// Decode the records first, then queue them under one short hold of
	// the lock: a Recv taking messages meanwhile waits less.
	recs := a.c.recs[:0]
	// Records are [uvarint id,] uvarint length, bytes (wire/SPEC.md),
	// parsed here in one loop: the Decoder's checks per field cost a tenth
	// of a message's receiving.
	for len(p) > 0 {
		id := next
		if !seq {
			var n int
			id, n = binary.Uvarint(p)
			if n <= 0 {
				return fmt.Errorf("%w: bad message id in a DATA frame for %q", wire.ErrMalformed, r.name)
			}
			p = p[n:]
		}
		next++
		ln, n := binary.Uvarint(p)
		if n <= 0 || ln > uint64(len(p)-n) || ln > max {
			return fmt.Errorf("%w: a message larger than the %d-byte limit of %q, or a truncated frame", wire.ErrMalformed, max, r.name)
		}
		p = p[n:]
		recs = append(recs, record{id: id, data: p[:ln:ln]})
		p = p[ln:]
	}
	a.c.recs = recs
	if len(recs) == 0 {
		return nil
	}
	r.mu.Lock()
	for _, x := range recs {
		if err := r.enqueueLocked(a, floor, x.id, x.data, nil); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	wake := r.wakeupLocked(a)
	r.mu.Unlock()
	if wake {
		r.wake()
	}
	return nil
}

// deliverRun queues the records of a DATA frame as one run, checked here
// and decoded as they are taken, for channels that decide nothing per
// message when it arrives (no de-duplication, no dropping).
func (r *Receiver) deliverRun(a *inAtt, recs []byte, max uint64, seq bool, first uint64) error {
	n := 0
	for p := recs; len(p) > 0; n++ {
		if !seq {
			_, k := binary.Uvarint(p)
			if k <= 0 {
				return fmt.Errorf("%w: bad message id in a DATA frame for %q", wire.ErrMalformed, r.name)
			}
			p = p[k:]
		}
		ln, k := binary.Uvarint(p)
		if k <= 0 || ln > uint64(len(p)-k) || ln > max {
			return fmt.Errorf("%w: a message larger than the %d-byte limit of %q, or a truncated frame", wire.ErrMalformed, max, r.name)
		}
		p = p[k+int(ln):]
	}
	if n == 0 {
		return nil
	}
	r.mu.Lock()
	a.received += uint64(n)
	r.received += uint64(n)
	if a.received > a.limit {
		r.mu.Unlock()
		return protoErr("sender %s overran its credit on %q (%d > %d)", a.remote, r.name, a.received, a.limit)
	}
	r.q.push(qitem{data: recs, att: a, run: n, seq: seq, id: first})
	r.qn += n
	wake := r.wakeupLocked(a)
	r.mu.Unlock()
	if wake {
		r.wake()
	}
	return nil
}

// wakeupLocked reports whether a waiting Recv must be woken for a message
// that came on a: not the one reading for itself, which sees it anyway.
// Waking one that can read for itself tells the reader to let it read from
// now on.
func (r *Receiver) wakeupLocked(a *inAtt) bool {
	if a.c.dr == r && r.qn > 0 {
		a.c.drGot = true // (the caller is a.c's reader, reading for r)
	}
	w := r.waiting
	if r.dreading != nil {
		w--
	}
	if w > 0 && r.dconn == a.c {
		a.c.yield = true
	}
	if w > 0 {
		r.wakes++
	}
	return w > 0
}

// deliverOne queues one message (a loaned or lent one).
func (r *Receiver) deliverOne(a *inAtt, floor uint64, m Message) error {
	var x *qextra
	if m.Files != nil || m.loan != nil {
		x = &qextra{files: m.Files, loan: m.loan}
	}
	r.mu.Lock()
	err := r.enqueueLocked(a, floor, m.ID, m.Data, x)
	wake := r.wakeupLocked(a)
	r.mu.Unlock()
	if wake {
		r.wake()
	}
	return err
}

// deliverFiles queues one message that came with files.
func (r *Receiver) deliverFiles(a *inAtt, floor uint64, d *wire.Decoder, c *conn) error {
	id := d.Uvarint()
	data := d.Bytes(r.opts.MaxMessageSize)
	nf := d.Uvarint()
	if err := d.End(); err != nil {
		return err
	}
	if nf > 64 {
		return protoErr("frame claims %d files, at most 64 pass with one message", nf)
	}
	var fds []int
	if c.fc != nil {
		var err error
		if fds, err = c.fc.TakeFiles(int(nf), 5*time.Second); err != nil {
			return protoErr("%v", err)
		}
	} else {
		if nf > uint64(len(c.fdq)) {
			return protoErr("frame claims %d files, %d arrived", nf, len(c.fdq))
		}
		fds = c.fdq[:nf]
		c.fdq = c.fdq[nf:]
	}
	files := make([]*os.File, nf)
	for i := range files {
		files[i] = os.NewFile(uintptr(fds[i]), fmt.Sprintf("loft:%s", r.name))
	}
	r.mu.Lock()
	err := r.enqueueLocked(a, floor, id, data, &qextra{files: files})
	wake := r.wakeupLocked(a)
	r.mu.Unlock()
	if wake {
		r.wake()
	}
	return err
}

// enqueueLocked queues message id of a; x holds its files or loan, if any.
func (r *Receiver) enqueueLocked(a *inAtt, floor, id uint64, data []byte, x *qextra) error {
	a.received++
	r.received++
	if a.received > a.limit {
		return protoErr("sender %s overran its credit on %q (%d > %d)", a.remote, r.name, a.received, a.limit)
	}
	if r.opts.Delivery == ExactlyOnce && r.isDupLocked(a.stream, floor, id) {
		r.duplicates++
		x.discard()
		r.doneLocked(a, false)
		return nil
	}
	if r.opts.OnFull == DropOldest && r.opts.Capacity > 0 {
		for r.qn >= r.opts.Capacity {
			old := r.q.pop() // no runs with DropOldest
			r.qn--
			old.extra.discard()
			r.dropped++
			r.doneLocked(old.att, false)
		}
	}
	r.q.push(qitem{data: data, id: id, att: a, extra: x})
	r.qn++
	if r.opts.OnFull == DropOldest && r.creditLocked(a) {
		w := r.windowLocked()
		r.scheduleAckLocked(a, a.creditLowLocked(w))
	}
	return nil
}

// discard frees what a message dropped unread holds: its files and its
// loan.
func (x *qextra) discard() {
	if x != nil {
		closeFiles(x.files)
		x.loan.release()
	}
}

func (r *Receiver) isDupLocked(stream, floor, id uint64) bool {
	st := r.dedup[stream]
	if st == nil {
		st = &dedupState{seen: map[uint64]struct{}{}, last: time.Now()}
		r.dedup[stream] = st
	}
	if floor > st.floor {
		st.floor = floor
		for k := range st.seen {
			if k < floor {
				delete(st.seen, k)
			}
		}
	}
	if id < st.floor {
		return true
	}
	if _, ok := st.seen[id]; ok {
		return true
	}
	st.seen[id] = struct{}{}
	return false
}

// doneLocked records that one message of a left the queue, which frees a
// credit, and returns its index on the attachment. Unless the caller
// finishes it later (Handle acknowledges after the handler returns), the
// message is finished, that is acknowledged, at once.
func (r *Receiver) doneLocked(a *inAtt, later bool) uint64 {
	idx := a.done
	a.done++
	grew := r.creditLocked(a)
	if !later {
		r.finishLocked(a, idx, grew)
	} else if grew {
		r.scheduleAckLocked(a, a.creditLowLocked(r.windowLocked()))
	}
	return idx
}

// finishLocked acknowledges message idx of a: the ACK's count advances over
// every message finished in order, and schedules an ACK when enough were,
// when credit runs low, or on a synchronous channel.
func (r *Receiver) finishLocked(a *inAtt, idx uint64, grew bool) {
	if idx == a.acked && len(a.finished) == 0 {
		a.acked++
	} else {
		if a.finished == nil {
			a.finished = map[uint64]struct{}{}
		}
		a.finished[idx] = struct{}{}
		for {
			if _, ok := a.finished[a.acked]; !ok {
				break
			}
			delete(a.finished, a.acked)
			a.acked++
		}
	}
	if a.gone {
		return
	}
	// Urgent when the sender waits (a synchronous channel, or Flush) or is
	// about to run out of credit, and when a quarter of a large window
	// was taken since the last ACK went (a stream keeps flowing, retained
	// copies are freed); otherwise lazy: the ACK rides on the next write
	// (a reply, typically) or goes after ackDelay, and costs no write of
	// its own. (Counting the quarter from the last ACK built, lazy ones
	// included, not from the last urgent one: where replies carry the
	// ACKs, calls back to back, an urgent one every quarter window woke
	// the writer goroutine for nothing, and the thread it woke took the
	// CPU from a side spinning for its answer.)
	w := r.windowLocked()
	switch {
	case r.opts.Capacity == 0 || grew && a.creditLowLocked(w) || a.c.ackingNow() ||
		w >= 64 && a.acked-max(a.lastAck, a.toldTaken.Load()) >= (w+3)/4:
		r.scheduleAckLocked(a, true)
	case a.acked > a.lastAck && (r.qn == 0 || a.acked-a.pubAcked >= lazyPublish):
		// Publishing costs three locked instructions; in a stream it is
		// done once per lazyPublish messages, and whenever the queue runs
		// empty (the end of a burst), so the last ACK is never stale.
		r.scheduleAckLocked(a, false)
	}
}

// lazyPublish is how many messages a lazy ACK's counters may lag behind
// while the queue is not empty (see finishLocked).
const lazyPublish = 64

// creditLowLocked reports whether a's sender is down to less than half a
// window of the credit it knows of (or out of it).
func (a *inAtt) creditLowLocked(w uint64) bool {
	return a.received+(w+1)/2 > a.told.Load()
}

// scheduleAckLocked publishes a's counters for the writer and queues an
// ACK, urgent or lazy (see conn.markAck).
func (r *Receiver) scheduleAckLocked(a *inAtt, urgent bool) {
	if a.gone {
		return
	}
	if urgent {
		a.lastAck = a.acked
	}
	a.pubAcked = a.acked
	a.ackTaken.Store(a.acked)
	a.ackLimit.Store(a.limit)
	// An ACK already queued will carry the new counters: the writer clears
	// its flag, then reads them, when it builds the frame (so a flag seen
	// set after the stores above means they go with it). A lazy one must
	// be made urgent; an urgent one needs nothing more: while it waits for
	// the writer, the credit its sender knows of looks low and every
	// message taken asks for one, and calling the writer for each was a
	// sixth of receiving in a stream.
	if urgent {
		if a.ackUrgent.Load() {
			return
		}
		a.ackUrgent.Store(true)
	} else if !a.ackQueued.CompareAndSwap(false, true) {
		return
	}
	// markAck takes c.wmu only, never r.mu: safe under r.mu.
	if urgent && r.inlineAck && (r.ackConn == nil || r.ackConn == a.c) {
		if a.c.markAckOwned(a) {
			r.ackConn = a.c
		}
		return
	}
	a.c.markAck(a, urgent)
}

// takeAckLocked is takeLaterLocked for a caller that, once it released
// r.mu, writes an urgent ACK the take made due itself: it returns the conn
// whose flush the caller then owns and must do (ackInline), or nil.
//
// Handing the ACK to the conn's writer goroutine instead cost a goroutine
// wake-up, and while the receiving goroutine kept its CPU busy the writer
// waited for a thread: 0.4 ms on average, up to 8 ms, on a 2-core machine
// streaming 64-byte messages, while the sender, out of credit, waited for
// that ACK and the receiver ran out of messages (BENCHMARKS.md).
func (r *Receiver) takeAckLocked(later bool, m *Message) (*inAtt, uint64, bool, *conn) {
	r.inlineAck = true
	a, idx, ok := r.takeLaterLocked(later, m)
	return a, idx, ok, r.endInlineLocked()
}

// endInlineLocked ends a stretch in which urgent ACKs are the caller's to
// write (r.inlineAck set), and returns the one conn whose flush the caller
// then owns, if any (urgent ACKs on other conns went to their writer
// goroutines: see scheduleAckLocked).
func (r *Receiver) endInlineLocked() *conn {
	r.inlineAck = false
	c := r.ackConn
	r.ackConn = nil
	return c
}

// ackInline writes what c has queued (the urgent ACK the caller made due,
// and anything small queued with it), having been given c's flush by
// takeAckLocked, without waiting: what the transport does not take at
// once goes to the writer goroutine (conn.flushNoWait). Call it without r.mu.
func ackInline(c *conn) {
	if c != nil {
		c.flushNoWait()
	}
}

func (r *Receiver) wake() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// grantSyncLocked gives every attached sender of a synchronous channel one
// credit because a Recv is waiting.
func (r *Receiver) grantSyncLocked() {
	for a := range r.atts {
		if r.creditLocked(a) {
			r.scheduleAckLocked(a, true)
		}
	}
}

// TryRecv returns a waiting message, or ErrEmpty at once.
func (r *Receiver) TryRecv() (Message, error) {
	r.mu.Lock()
	var m Message
	_, _, ok, ac := r.takeAckLocked(false, &m)
	closed := r.closed
	r.mu.Unlock()
	ackInline(ac)
	if ok {
		return m, nil
	}
	if closed {
		return Message{}, &OpError{Op: "recv", Name: r.name, Err: ErrClosed}
	}
	return Message{}, ErrEmpty
}

// takeLaterLocked pops a message into m; with later, it stays
// unacknowledged until finish is called with the returned attachment and
// index. (m is filled in place: a Message is 80 bytes, and copies of it
// on the way out were a tenth of a Recv.)
func (r *Receiver) takeLaterLocked(later bool, m *Message) (*inAtt, uint64, bool) {
	if r.qn == 0 {
		return nil, 0, false
	}
	var a *inAtt
	if f := r.q.front(); f.run > 0 {
		// The next record of a run (checked by deliverRun).
		p, id := f.data, f.id
		if f.seq {
			f.id++
		} else {
			var n int
			id, n = binary.Uvarint(p)
			p = p[n:]
		}
		ln, n := binary.Uvarint(p)
		p = p[n:]
		a = f.att
		m.Data, m.From, m.ID = p[:ln:ln], a.remote, id
		f.data = p[ln:]
		if f.run--; f.run == 0 {
			r.q.pop()
		}
	} else {
		it := r.q.pop()
		a = it.att
		it.fill(m)
	}
	r.qn--
	r.taken++
	if r.qn == 0 && !a.c.answering.Load() {
		a.c.answering.Store(true)
	}
	idx := r.doneLocked(a, later)
	if r.qn > 0 && r.waiting > 0 {
		r.wake()
	}
	return a, idx, true
}

// finish acknowledges a message taken with takeLaterLocked.
func (r *Receiver) finish(a *inAtt, idx uint64) {
	r.mu.Lock()
	r.inlineAck = true
	r.finishLocked(a, idx, false)
	ac := r.endInlineLocked()
	r.mu.Unlock()
	ackInline(ac)
}

// Recv waits for a message. It returns an error wrapping ErrClosed once the
// receiver is closed and its queue is empty, and ctx.Err() when ctx ends.
// The message counts as delivered (acknowledged to its sender) once Recv
// returns it; Handle acknowledges only after the handler returns.
func (r *Receiver) Recv(ctx context.Context) (Message, error) {
	var m Message
	_, _, err := r.recv(ctx, false, &m, nil)
	return m, err
}

// RecvBatch waits for a message like Recv, then fills ms with it and with
// the messages waiting behind it, up to len(ms), under one hold of the
// receiver's lock, and returns how many it filled. Each counts as
// delivered once RecvBatch returns, as with Recv.
func (r *Receiver) RecvBatch(ctx context.Context, ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	ms[0] = Message{}
	if _, _, err := r.recv(ctx, false, &ms[0], nil); err != nil {
		return 0, err
	}
	n := 1
	r.mu.Lock()
	r.inlineAck = true // (for the whole batch: it owns one conn's flush at most)
	for ; n < len(ms); n++ {
		ms[n] = Message{}
		if _, _, ok := r.takeLaterLocked(false, &ms[n]); !ok {
			break
		}
	}
	ac := r.endInlineLocked()
	r.mu.Unlock()
	ackInline(ac)
	return n, nil
}

// recv waits for a message and fills m with it (see takeLaterLocked).
func (r *Receiver) recv(ctx context.Context, later bool, m *Message, left *int) (*inAtt, uint64, error) {
	yielded := false // this Recv gave the baton to another that reads on
	for {
		r.mu.Lock()
		if a, idx, ok, ac := r.takeAckLocked(later, m); ok {
			if left != nil {
				*left = r.qn
			}
			r.mu.Unlock()
			ackInline(ac)
			return a, idx, nil
		}
		if r.closed {
			r.mu.Unlock()
			return nil, 0, &OpError{Op: "recv", Name: r.name, Err: ErrClosed}
		}
		if err := ctx.Err(); err != nil {
			r.mu.Unlock()
			return nil, 0, err
		}
		r.waiting++
		if r.opts.Capacity == 0 {
			r.grantSyncLocked()
		}
		if c := r.dconn; c != nil && !yielded && r.dreading == nil && (c.takeRead(readDirect) || !c.askRead(r) && c.takeRead(readDirect)) {
			// Read the conn here: the message reaches this goroutine
			// without a hand-off.
			r.dreading, r.dctx, r.dint = c, ctx, false
			if !c.lazyCtx {
				r.watchCtxLocked(ctx)
			}
			r.mu.Unlock()
			c.readFrames(r, ctx)
			yielded = c.yield // (the baton is still ours: so is c.yield)
			r.mu.Lock()
			r.dreading, r.dctx = nil, nil
			if _, ok := ctx.Deadline(); ok && r.actx == ctx && r.lastCtx != ctx {
				// A context with a deadline is most likely one per call:
				// unregister now, or its cancellation, right after this
				// Recv returns, would start a goroutine for nothing. One
				// that came back (a loop's) stays registered: registering
				// it on every read allocated twice per read.
				r.astop()
				r.actx, r.astop = nil, nil
			}
			r.lastCtx = ctx
			r.waiting--
			// Another Recv of this receiver waiting takes the baton over
			// (one wake-up, as from a background reader).
			handOff := r.waiting > 0
			// Take the message read in this same hold of the lock: one
			// more lock and unlock was a tenth of a shared-memory
			// message's way from the ring to the application.
			a, idx, ok, ac := r.takeAckLocked(later, m)
			if ok && left != nil {
				*left = r.qn
			}
			r.mu.Unlock()
			c.releaseRead(readDirect, handOff)
			ackInline(ac)
			if handOff {
				r.wake()
			}
			if ok {
				return a, idx, nil
			}
			continue
		}
		// Wait for a reader to deliver. Register with the conns so that
		// somebody reads them. After yielding, the Recv yielded to reads
		// (registering would call the background reader before it takes
		// the baton); if it does not come back to Recv, the background
		// reader takes over within readHandBack of the release.
		var buf [4]*conn
		conns, parked := r.waitConnsLocked(buf[:0])
		r.mu.Unlock()
		if yielded {
			conns, yielded = nil, false
		}
		for _, c := range conns {
			c.waitingOn(parked)
		}
		var err error
		select {
		case <-r.signal:
		case <-r.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		for _, c := range conns {
			c.doneWaiting(parked)
		}
		r.mu.Lock()
		r.waiting--
		r.mu.Unlock()
		if err != nil {
			return nil, 0, err
		}
	}
}

// waitConnsLocked appends the conns a waiting Recv depends on, and whether
// it will read for itself once woken (one conn that allows it).
func (r *Receiver) waitConnsLocked(conns []*conn) ([]*conn, bool) {
	if r.dconn != nil {
		return append(conns, r.dconn), true
	}
	for a := range r.atts {
		dup := false
		for _, c := range conns {
			dup = dup || c == a.c
		}
		if !dup {
			conns = append(conns, a.c)
		}
	}
	return conns, false
}

// Messages returns an iterator over received messages. It ends when ctx
// ends or the receiver closes; the error, if any, is the last pair's.
func (r *Receiver) Messages(ctx context.Context) iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for {
			m, err := r.Recv(ctx)
			if err != nil {
				yield(Message{}, err)
				return
			}
			if !yield(m, nil) {
				return
			}
		}
	}
}

// Close stops the receiver: its name is released, attached senders are
// told, and blocked Recv calls return. Messages still queued can be drained
// with TryRecv; under AtLeastOnce their senders will send them again to
// another receiver because they were never acknowledged.
func (r *Receiver) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	atts := make([]*inAtt, 0, len(r.atts))
	for a := range r.atts {
		atts = append(atts, a)
		// Acknowledge what was taken before saying goodbye; the ACK is
		// queued ahead of the DETACH.
		if a.acked > a.lastAck {
			r.scheduleAckLocked(a, true)
		}
		a.gone = true
	}
	r.atts = map[*inAtt]struct{}{}
	close(r.done)
	r.interruptLocked()
	if r.astop != nil {
		r.astop()
	}
	r.actx, r.astop, r.lastCtx = nil, nil, nil
	r.mu.Unlock()
	r.node.removeReceiver(r)
	for _, a := range atts {
		a.c.detachIn(a.id)
	}
	return nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// ring is a growable FIFO queue. Its length is a power of two, so that
// indices wrap with a mask.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (q *ring[T]) len() int { return q.n }

func (q *ring[T]) push(v T) {
	if q.n == len(q.buf) {
		nb := make([]T, max(16, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = v
	q.n++
}

func (q *ring[T]) pop() T {
	var zero T
	v := q.buf[q.head]
	q.buf[q.head] = zero
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	return v
}

func (q *ring[T]) peek() T { return q.buf[q.head] }

// front returns the first item in place (len > 0).
func (q *ring[T]) front() *T { return &q.buf[q.head] }

// at returns the item i places after the head (i < len).
func (q *ring[T]) at(i int) T { return q.buf[(q.head+i)&(len(q.buf)-1)] }

// back returns the last item (len > 0).
func (q *ring[T]) back() *T { return &q.buf[(q.head+q.n-1)&(len(q.buf)-1)] }
