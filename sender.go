package loft

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft/wire"
	"golang.org/x/sys/unix"
)

// Sender sends messages to a channel (each message to one receiver), a topic
// (each message to every subscriber) or a node's inbox. It attaches to every
// receiver of the name as receivers come and go. A Sender is safe for
// concurrent use; messages sent from one goroutine arrive in order.
type Sender struct {
	node   *Node
	kind   string
	name   string
	target string // explicit address, or "" to resolve name through the registry
	stream uint64 // random id of this sender for de-duplication
	bcast  bool   // topic: every live link gets every message

	mu           sync.Mutex
	links        []*link
	rr           int
	nextID       uint64
	orphans      ring[retained] // unacknowledged messages of dead links, to send again
	hadLinks     bool
	closed       bool
	wakeCh       []chan struct{}          // one per goroutine in waitLocked: signalled when links or credit change
	freeCh       []chan struct{}          // wakeCh's channels for reuse (no allocation per wait)
	waiters      atomic.Int32             // goroutines in waitLocked (changed under mu; read without it by ack)
	acksLeft     atomic.Bool              // a link holds an ACK its conn's reader left for the lock's holder (see ack)
	syncs        map[uint64]chan struct{} // synchronous sends waiting for their ack
	pending      map[string]bool          // node ids being attached
	arena        []byte                   // retention chunk, see keep
	chunks       ring[keptChunk]          // retention chunks in use, oldest first; arena is the last
	bigFree      [][]byte                 // copies of large messages, acknowledged, to reuse (see keepBig)
	sentBig      bool                     // keepBig was called: ACKs look for copies to take back
	bigFreeBytes int                      // the capacity of bigFree's copies
	floorID      uint64                   // see floorFunc
	floorFn      func() uint64            // s.floorNow, bound once
	sentN        uint64                   // messages accepted, guarded by mu
	lentN        uint64                   // of them, lent (see lendLocked), guarded by mu

	acked       atomic.Uint64
	lost        atomic.Uint64
	redelivered atomic.Uint64
}

// maxBigFree and maxBigFreeBytes bound the acknowledged copies of large
// messages a Sender keeps for reuse, in number and in bytes.
const (
	maxBigFree      = 16
	maxBigFreeBytes = 16 << 20
)

// keepBig copies a large message (more than retainChunk/8 bytes) into a
// buffer of its own: an acknowledged one of about its size if there is
// one. A fresh one is zeroed by the allocator and, for a large message,
// faulted in page by page: for 1 MiB messages that cost as much as the
// copy. Caller holds s.mu.
func (s *Sender) keepBig(data []byte) []byte {
	if b := s.reuseBig(len(data)); b != nil {
		return append(b[:0], data...)
	}
	return append([]byte(nil), data...)
}

// reuseBig returns an acknowledged copy of at least n bytes (and not much
// more) to write a large message's copy into, or nil. Caller holds s.mu.
func (s *Sender) reuseBig(n int) []byte {
	s.sentBig = true
	for i, b := range s.bigFree {
		if cap(b) >= n && cap(b) <= 2*n {
			last := len(s.bigFree) - 1
			s.bigFree[i], s.bigFree[last] = s.bigFree[last], nil
			s.bigFree = s.bigFree[:last]
			s.bigFreeBytes -= cap(b)
			return b[:n]
		}
	}
	return nil
}

// freeBig takes back the copies of large messages among the n oldest
// unacknowledged messages of l, which an ACK has just acknowledged, for
// keepBig to reuse: they were written before the receiver could take them,
// and nothing else refers to them. Caller holds s.mu.
func (s *Sender) freeBig(l *link, n int) {
	for i, seen := 0, 0; seen < n && i < l.unack.len() && len(s.bigFree) < maxBigFree; i++ {
		r := l.unack.at(i)
		seen += max(r.n, 1)
		if r.n == 0 && !r.loan && len(r.data) > retainChunk/8 && s.bigFreeBytes+cap(r.data) <= maxBigFreeBytes {
			s.bigFree = append(s.bigFree, r.data[:0:cap(r.data)])
			s.bigFreeBytes += cap(r.data)
		}
	}
}

// SenderStats are a sender's counters.
type SenderStats struct {
	Sent        uint64 // messages accepted by Send
	Acked       uint64 // messages a receiver acknowledged
	Lost        uint64 // AtMostOnce messages in flight when their receiver died
	Redelivered uint64 // messages sent again after their receiver died or the connection broke
	Lent        uint64 // large messages carried through the shared-memory loan pool instead of the ring
	Pending     int    // messages sent and not yet acknowledged, orphans included
	Receivers   int    // live receivers attached now
}

// link is a Sender's attachment to one receiver. Guarded by Sender.mu.
type link struct {
	s      *Sender
	c      *conn
	id     uint32
	props  ChannelOptions
	sent   uint64          // messages put on this link
	taken  uint64          // acknowledged
	limit  uint64          // credit limit: send while sent < limit
	unack  ring[retained]  // messages and runs not yet acknowledged, oldest first
	unackN int             // messages in unack
	lent   ring[lentRange] // ranges lent to this link's messages, oldest first
	dead   bool
	remote string

	leftTaken, leftLimit atomic.Uint64 // an ACK left for the lock's holder (Sender.ack), 0 when none
}

// lentRange is a loan pool range a Send lent a large message (see
// Sender.lendLocked); it is retired once the message is acknowledged or its
// link is gone.
type lentRange struct {
	seq uint64 // the message's place on its link (link.sent before it)
	off int
	p   *outPool
}

// lendLocked copies a large message into the loan pool of l's connection
// when that is shared memory and the pool has room, and queues a LOAN with
// FlagCopy instead of a DATA frame: the bytes then cross once, with no
// retained copy on the heap and no checksum over them (the receiver copies
// them out of the pool). It reports false, having done nothing, otherwise.
// If it returns a conn, the caller must call its flushNow once s.mu is
// released, as for putLocked.
func (s *Sender) lendLocked(l *link, id uint64, data []byte) (bool, *conn) {
	c := l.c
	if c.fc == nil || len(data) < bigMessage || s.bcast {
		return false, nil // (checked by the caller too, on the hot path)
	}
	p, err := c.loanPool()
	if err != nil {
		return false, nil
	}
	off, ok := p.lend(len(data))
	if !ok {
		return false, nil
	}
	mem := p.m.mem[off : off+len(data) : off+len(data)]
	copy(mem, data)
	pl := loanPayload(l.id, min(s.floorLocked(), id), id, p.id, off, len(data))
	c.wmu.Lock()
	c.closeOpenLocked()
	c.out = wire.AppendFrame(c.out, wire.TLoan, wire.FlagCopy, pl)
	w := c.wakeLocked()
	c.wmu.Unlock()
	l.lent.push(lentRange{seq: l.sent, off: off, p: p})
	l.sent++
	s.lentN++
	if l.props.Delivery != AtMostOnce {
		l.unack.push(retained{id: id, data: mem, loan: true})
		l.unackN++
	}
	if w {
		return true, c
	}
	return true, nil
}

// retireLocked retires the ranges lent to l's messages before place upTo.
func (l *link) retireLocked(upTo uint64) {
	for l.lent.len() > 0 && l.lent.peek().seq < upTo {
		r := l.lent.pop()
		r.p.settle(r.off, lentRetired)
	}
}

// retained is an unacknowledged message kept to send again, or a run of
// them: small messages sent one after another on a link, with consecutive
// ids, whose copies lie one after another in a retention chunk, share one
// entry (see pushUnack). A link's queue of them is as deep as its window,
// and one entry per message made it too large for the CPU's cache: pushing
// it was an eighth of sending.
type retained struct {
	id   uint64 // the message's id; a run's first
	data []byte // the message; a run's records: uvarint length, bytes
	n    int    // messages in a run; 0 for a single message
	loan bool   // data lives in a loan pool: copy it out before sending again
}

// next returns the run's first message and its size in data.
func (r *retained) next() ([]byte, int) {
	ln, k := binary.Uvarint(r.data)
	return r.data[k : k+int(ln) : k+int(ln)], k + int(ln)
}

// pushUnack retains message id, extending the last run when rec (its
// record in a retention chunk, or nil) follows that run's records.
func (l *link) pushUnack(id uint64, data, rec []byte) {
	l.unackN++
	if rec == nil {
		l.unack.push(retained{id: id, data: data})
		return
	}
	if l.unack.len() > 0 {
		b := l.unack.back()
		if n := len(b.data); b.n > 0 && b.id+uint64(b.n) == id && n < cap(b.data) && &b.data[:n+1][n] == &rec[0] {
			b.data = b.data[:n+len(rec)]
			b.n++
			return
		}
	}
	l.unack.push(retained{id: id, data: rec, n: 1})
}

// popUnack removes the oldest retained message and returns it (unackN > 0).
func (l *link) popUnack() retained {
	l.unackN--
	f := l.unack.front()
	if f.n == 0 {
		return l.unack.pop()
	}
	data, k := f.next()
	r := retained{id: f.id, data: data}
	if f.n--; f.n == 0 {
		l.unack.pop()
	} else {
		f.id++
		f.data = f.data[k:]
	}
	return r
}

// dropUnack removes the k oldest retained messages (k <= unackN).
func (l *link) dropUnack(k int) {
	l.unackN -= k
	for k > 0 {
		f := l.unack.front()
		if f.n <= k {
			k -= max(f.n, 1)
			l.unack.pop()
			continue
		}
		for range k {
			_, w := f.next()
			f.data = f.data[w:]
		}
		f.id += uint64(k)
		f.n -= k
		k = 0
	}
}

func newSender(n *Node, kind, name, target string) *Sender {
	s := &Sender{
		node:    n,
		kind:    kind,
		name:    name,
		target:  target,
		stream:  rand.Uint64(),
		bcast:   kind == kindTopic,
		syncs:   map[uint64]chan struct{}{},
		pending: map[string]bool{},
	}
	s.floorFn = s.floorNow
	return s
}

// keptChunk is a chunk of retained copies and the highest message id in it.
type keptChunk struct {
	buf  []byte
	last uint64
}

// retainChunk is the size of a retention chunk; copies of messages larger
// than an eighth of it get an allocation of their own.
const retainChunk = 64 << 10

// keep copies message id's data for retention until acknowledged. Small
// messages are packed into chunks, so that retention costs no allocation
// per message, and a chunk whose messages are all acknowledged is used
// again: a stream of small messages allocates nothing in steady state, and
// so gives the garbage collector nothing to do (it cost a third of the
// sending process's time at a few million messages a second). Ids grow
// with each chunk, so a chunk is free once the floor (the lowest id not
// acknowledged, orphans included) is past its last one; nothing but
// retention refers to a chunk (frames copy the data).
func (s *Sender) keep(id uint64, data []byte) []byte {
	data, _ = s.keepRec(id, data)
	return data
}

// keepRec is keep that also returns, for a message copied into a chunk,
// its record there (uvarint length, bytes; see pushUnack), nil otherwise.
func (s *Sender) keepRec(id uint64, data []byte) ([]byte, []byte) {
	if len(data) == 0 {
		return data, nil // nothing to keep, and no chunk to note id in
	}
	if len(data) > retainChunk/8 {
		return s.keepBig(data), nil
	}
	if len(s.arena)+len(data)+binary.MaxVarintLen32 > cap(s.arena) {
		if s.chunks.len() > 1 && s.chunks.peek().last < s.floorLocked() {
			c := s.chunks.pop()
			c.buf = c.buf[:0]
			s.chunks.push(c)
		} else {
			s.chunks.push(keptChunk{buf: wire.Alloc(retainChunk)[:0]})
		}
		s.arena = s.chunks.back().buf
	}
	off := len(s.arena)
	s.arena = binary.AppendUvarint(s.arena, uint64(len(data)))
	at := len(s.arena)
	s.arena = append(s.arena, data...)
	s.chunks.back().last = id
	// The record keeps the chunk's capacity: a run grows over the next.
	return s.arena[at:len(s.arena):len(s.arena)], s.arena[off:len(s.arena)]
}

// Name returns the name sent to.
func (s *Sender) Name() string { return s.name }

// Stats returns the sender's counters.
func (s *Sender) Stats() SenderStats {
	s.mu.Lock()
	if s.acksLeft.Load() {
		s.takeLeftAcksLocked()
	}
	sent, lent := s.sentN, s.lentN
	p := s.orphans.len()
	live := 0
	for _, l := range s.links {
		p += l.unackN
		if !l.dead {
			live++
		}
	}
	s.mu.Unlock()
	return SenderStats{
		Sent:        sent,
		Acked:       s.acked.Load(),
		Lost:        s.lost.Load(),
		Redelivered: s.redelivered.Load(),
		Lent:        lent,
		Pending:     p,
		Receivers:   live,
	}
}

// waitLocked waits for a change (credit, a link, the end) or ctx. It is
// called with s.mu held and returns with it held; discover also asks the
// node to look for receivers now.
func (s *Sender) waitLocked(ctx context.Context, discover bool) error {
	s.waiters.Add(1)
	if s.acksLeft.Load() {
		// An ACK left while this goroutine held the lock: it may be the
		// credit waited for (see ack). Apply it and look again.
		s.takeLeftAcksLocked()
		s.waiters.Add(-1)
		return nil
	}
	var ch chan struct{}
	if n := len(s.freeCh); n > 0 {
		ch, s.freeCh = s.freeCh[n-1], s.freeCh[:n-1]
	} else {
		ch = make(chan struct{}, 1)
	}
	s.wakeCh = append(s.wakeCh, ch)
	var buf [4]*conn
	conns := buf[:0]
	for _, l := range s.links {
		if !slices.Contains(conns, l.c) {
			conns = append(conns, l.c)
		}
	}
	s.mu.Unlock()
	if discover {
		s.node.kickDiscovery()
	}
	for _, c := range conns {
		c.waitingOn(false)
	}
	var err error
	select {
	case <-ch:
	case <-ctx.Done():
		err = ctx.Err()
	}
	for _, c := range conns {
		c.doneWaiting(false)
	}
	s.mu.Lock()
	s.waiters.Add(-1)
	if i := slices.Index(s.wakeCh, ch); i >= 0 { // (not signalled: ctx ended)
		s.wakeCh = slices.Delete(s.wakeCh, i, i+1)
	}
	select { // (signalled as well as ended)
	case <-ch:
	default:
	}
	s.freeCh = append(s.freeCh, ch)
	return err
}

// notifyLocked wakes goroutines waiting for a change.
func (s *Sender) notifyLocked() {
	for _, ch := range s.wakeCh {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	clear(s.wakeCh)
	s.wakeCh = s.wakeCh[:0]
}

// addLink is called once an attach succeeded.
func (s *Sender) addLink(l *link, rep attachReply) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, l.remote)
	if s.closed || l.dead {
		return false
	}
	l.props = rep.props
	l.limit = rep.limit
	s.links = append(s.links, l)
	s.hadLinks = true
	s.resendLocked()
	s.notifyLocked()
	return true
}

// linkDown handles the end of a link: AtLeastOnce messages not yet
// acknowledged become orphans to be sent again, AtMostOnce ones are lost.
func (s *Sender) linkDown(l *link, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.dead {
		return
	}
	if s.acksLeft.Load() {
		s.takeLeftAcksLocked() // (what they acknowledge is not sent again)
	}
	l.dead = true
	for i, x := range s.links {
		if x == l {
			s.links = append(s.links[:i], s.links[i+1:]...)
			break
		}
	}
	for i := 0; i < l.unack.len(); i++ {
		// A loan's memory goes with its connection: keep a copy to resend.
		if r := &l.unack.buf[(l.unack.head+i)%len(l.unack.buf)]; r.loan { // never a run
			r.data, r.loan = append([]byte(nil), r.data...), false
		}
	}
	l.retireLocked(math.MaxUint64)
	if l.props.Delivery == AtMostOnce || s.bcast {
		if n := l.sent - l.taken; n > 0 {
			s.lost.Add(n)
		}
		for id, ch := range s.syncs {
			_ = id
			close(ch)
		}
		clear(s.syncs)
	} else {
		// Orphans keep their order: older orphans first, then this link's,
		// one entry per message (no id of another link lies inside a run).
		var merged ring[retained]
		a := s.orphans
		for a.len() > 0 || l.unackN > 0 {
			if l.unackN == 0 || a.len() > 0 && a.peek().id < l.unack.peek().id {
				merged.push(a.pop())
			} else {
				merged.push(l.popUnack())
			}
		}
		s.orphans = merged
		s.resendLocked()
	}
	l.unack, l.unackN = ring[retained]{}, 0
	s.node.log.Debug("receiver link down", "name", s.name, "peer", l.remote, "err", cause)
	s.notifyLocked()
	s.node.kickDiscovery()
}

// ack applies an ACK from the receiver.
//
// A conn's reader calls it, and in a stream the sending goroutine holds
// s.mu most of the time: waiting for the lock behind it took 78 µs per ACK
// on average (a 64-byte stream over shared memory, Go's mutex lets the
// holder take it again before a woken waiter runs), while the sending
// goroutine ran out of credit and waited for this very ACK. So when the
// lock is taken, the ACK is left on the link for the holder, which applies
// it at its next Send or before it waits for credit (takeLeftAcksLocked);
// the reader takes the lock only if a goroutine waits in waitLocked, for
// a synchronous send's ACK, or in Loan for pool room (it may have looked
// for left ACKs just before this one was left). The
// waiter count is written before the left flag is read there, and the
// flag before the count is read here: one side always sees the other.
func (s *Sender) ack(l *link, taken, limit uint64) error {
	if !s.mu.TryLock() {
		l.leaveAck(taken, limit)
		s.acksLeft.Store(true)
		if s.waiters.Load() == 0 {
			return nil
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if s.acksLeft.Load() {
		s.takeLeftAcksLocked()
	}
	return s.ackLocked(l, taken, limit)
}

// leaveAck records an ACK for the holder of the Sender's lock (see
// Sender.ack). ACKs of a link come in order from one reader at a time, so
// the counters only grow.
func (l *link) leaveAck(taken, limit uint64) {
	l.leftTaken.Store(taken)
	l.leftLimit.Store(limit)
}

// takeLeftAcksLocked applies the ACKs conn readers left on the links. An
// ACK that breaks the protocol closes its conn, as the reader would have.
func (s *Sender) takeLeftAcksLocked() {
	s.acksLeft.Store(false)
	for _, l := range s.links {
		taken, limit := l.leftTaken.Swap(0), l.leftLimit.Swap(0)
		if taken == 0 && limit == 0 {
			continue
		}
		if err := s.ackLocked(l, taken, limit); err != nil {
			go l.c.close(err) // (not under s.mu: closing takes it)
		}
	}
}

// ackLocked is ack under s.mu.
func (s *Sender) ackLocked(l *link, taken, limit uint64) error {
	if l.dead {
		return nil
	}
	if taken > l.sent {
		return protoErr("receiver %s acknowledged %d messages of %d sent", l.remote, taken, l.sent)
	}
	if taken > l.taken {
		n := taken - l.taken
		s.acked.Add(n)
		l.taken = taken
		if l.lent.len() > 0 {
			l.retireLocked(taken)
		}
		if len(s.syncs) == 0 {
			k := int(min(n, uint64(l.unackN)))
			if s.sentBig {
				s.freeBig(l, k)
			}
			l.dropUnack(k)
		} else {
			for i := uint64(0); i < n && l.unackN > 0; i++ {
				r := l.popUnack()
				if ch, ok := s.syncs[r.id]; ok {
					close(ch)
					delete(s.syncs, r.id)
				}
			}
		}
	}
	if limit > l.limit {
		l.limit = limit
	}
	if s.orphans.len() > 0 {
		s.resendLocked()
	}
	s.notifyLocked()
	return nil
}

// floorLocked is the lowest id not yet acknowledged.
func (s *Sender) floorLocked() uint64 {
	f := s.nextID + 1
	if s.orphans.len() > 0 && s.orphans.peek().id < f {
		f = s.orphans.peek().id
	}
	for _, l := range s.links {
		if l.unack.len() > 0 && l.unack.peek().id < f {
			f = l.unack.peek().id
		}
	}
	return f
}

// pickLocked returns a live link with credit, round robin.
func (s *Sender) pickLocked() *link {
	n := len(s.links)
	if n == 1 { // the common case, without the divisions below
		if l := s.links[0]; l.sent < l.limit {
			return l
		}
		return nil
	}
	for i := 0; i < n; i++ {
		l := s.links[(s.rr+i)%n]
		if l.sent < l.limit {
			s.rr = (s.rr + i + 1) % n
			return l
		}
	}
	return nil
}

// putLocked queues one message on l. If it returns a conn, the caller must
// call its flushNow once s.mu is released.
// rec is data's record in a retention chunk, if keepRec copied it there;
// fresh says that data is the caller's, and a large message is to be
// copied (and checksummed in the same pass) here.
func (s *Sender) putLocked(l *link, id uint64, data, rec []byte, fds []int, fresh bool) *conn {
	c := l.c
	var head []byte
	if fds != nil || len(data) >= bigMessage {
		floor := min(s.floorLocked(), id)
		if fds == nil {
			// A frame of its own, sealed here, its payload written from data.
			head = wire.AppendHeader(make([]byte, 0, 48), wire.TData, 0)
			head = binary.AppendUvarint(head, uint64(l.id))
			head = binary.AppendUvarint(head, floor)
			head = binary.AppendUvarint(head, id)
			head = binary.AppendUvarint(head, uint64(len(data)))
			if fresh {
				if kept := s.reuseBig(len(data)); kept != nil {
					if c.nosum {
						copy(kept, data)
						wire.SetLengthSplit(head, len(data))
					} else {
						wire.CopySealed(head, kept, data)
					}
					data = kept
				} else {
					// A new copy: append copies without zeroing first.
					data = append([]byte(nil), data...)
					c.sealSplit(head, data)
				}
			} else {
				c.sealSplit(head, data)
			}
		}
		c.wmu.Lock()
		if fds != nil {
			c.appendFilesLocked(l.id, floor, id, data, fds)
		} else {
			c.appendBigLocked(head, data)
		}
	} else {
		c.wmu.Lock()
		c.appendDataLocked(l.id, s.floorFunc(id), id, data)
	}
	if n := len(c.out) + c.segBytes; n > highWater || c.backlog.Load() > highWater {
		c.backlog.Store(int64(n))
	}
	w := c.wakeLocked()
	c.wmu.Unlock()
	l.sent++
	if l.props.Delivery != AtMostOnce && !s.bcast {
		l.pushUnack(id, data, rec)
	}
	if w {
		return c
	}
	return nil
}

// floorFunc returns the floor for a frame that starts with message id,
// computed only if a frame starts. Caller holds s.mu until it is called.
func (s *Sender) floorFunc(id uint64) func() uint64 {
	s.floorID = id
	return s.floorFn
}

func (s *Sender) floorNow() uint64 { return min(s.floorLocked(), s.floorID) }

// resendLocked sends orphans to links with credit, oldest first.
func (s *Sender) resendLocked() {
	for s.orphans.len() > 0 {
		l := s.pickLocked()
		if l == nil {
			return
		}
		r := s.orphans.pop()
		s.redelivered.Add(1)
		if c := s.putLocked(l, r.id, r.data, nil, nil, false); c != nil {
			c.signal()
		}
	}
}

func (s *Sender) errGoneLocked() error {
	return &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: every receiver went away (%d messages held for redelivery)", ErrPeerGone, s.orphans.len())}
}

// Send sends one message, blocking as the channel's semantics say: until a
// receiver has room (capacity N), until a receiver took it (capacity 0), or
// not at all (DropOldest). Before any receiver exists Send waits for one;
// once every receiver has gone it returns an error wrapping ErrPeerGone.
// data may be reused by the caller once Send returns.
func (s *Sender) Send(ctx context.Context, data []byte) error {
	return s.send(ctx, data, nil, true)
}

// TrySend sends one message if a receiver has room now, and returns an error
// wrapping ErrFull otherwise. It never blocks; on a synchronous channel it
// succeeds only if a receiver is waiting, and does not wait for the take.
func (s *Sender) TrySend(data []byte) error {
	return s.send(context.Background(), data, nil, false)
}

// SendFile sends one message with open files attached (at most 64). The
// files are duplicated, so the caller may close its own once SendFile
// returns. Links on this host (shared memory or Unix socket) carry files;
// over TCP SendFile returns an error wrapping ErrUnsupported.
func (s *Sender) SendFile(ctx context.Context, data []byte, files ...*os.File) error {
	fds := make([]int, 0, len(files))
	for _, f := range files {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, x := range fds {
				unix.Close(x)
			}
			return &OpError{Op: "send", Name: s.name, Err: os.NewSyscallError("dup", err)}
		}
		fds = append(fds, fd)
	}
	if err := s.send(ctx, data, fds, true); err != nil {
		for _, x := range fds {
			unix.Close(x)
		}
		return err
	}
	return nil
}

// SendBatch sends several messages at once, in order, blocking like Send.
// It returns how many were sent before an error. Messages that can go at
// once (a receiver has credit, the message is under 32 KiB) are queued
// under one hold of the Sender's lock and of their connection's, not one
// per message: a batch costs a fraction of as many Sends.
func (s *Sender) SendBatch(ctx context.Context, msgs [][]byte) (int, error) {
	done := 0
	for done < len(msgs) {
		done += s.sendRun(msgs[done:])
		if done == len(msgs) {
			break
		}
		// The next one waits for credit, is large, or fails: the way of Send.
		if err := s.send(ctx, msgs[done], nil, true); err != nil {
			return done, err
		}
		done++
	}
	return done, nil
}

// sendRun queues the leading messages of msgs that go without waiting and
// in a shared frame (see SendBatch), and returns how many it queued. It
// stops at the first that would wait, is large, or fails, and when a
// connection's output buffer is over highWater (Send then waits for it).
func (s *Sender) sendRun(msgs [][]byte) int {
	s.mu.Lock()
	if s.closed || s.orphans.len() > 0 || s.bcast || len(s.links) == 0 || s.links[0].props.Capacity == 0 {
		s.mu.Unlock()
		return 0
	}
	max := s.links[0].props.MaxMessageSize
	var held *conn // the connection whose wmu is held
	var buf [4]*conn
	flush := buf[:0] // connections this run must flush (see putLocked)
	release := func() {
		if held.wakeLocked() {
			flush = append(flush, held)
		}
		held.wmu.Unlock()
	}
	n := 0
	for _, data := range msgs {
		if len(data) > max || len(data) >= bigMessage {
			break
		}
		l := s.pickLocked()
		if l == nil || l.props.Capacity == 0 {
			break
		}
		if l.c != held {
			if held != nil {
				release()
			}
			held = l.c
			held.wmu.Lock()
		}
		if len(held.out)+held.segBytes > highWater {
			break
		}
		s.nextID++
		id := s.nextID
		keep := l.props.Delivery != AtMostOnce
		var rec []byte
		if keep {
			data, rec = s.keepRec(id, data)
		}
		held.appendDataLocked(l.id, s.floorFunc(id), id, data)
		l.sent++
		if keep {
			l.pushUnack(id, data, rec)
		}
		s.sentN++
		n++
	}
	if held != nil {
		release()
	}
	s.mu.Unlock()
	for _, c := range flush {
		c.flushNow()
	}
	return n
}

func (s *Sender) send(ctx context.Context, data []byte, fds []int, block bool) error {
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return &OpError{Op: "send", Name: s.name, Err: ErrClosed}
		}
		if s.acksLeft.Load() {
			s.takeLeftAcksLocked()
		}
		if s.orphans.len() > 0 {
			s.resendLocked()
		}
		if len(s.links) > 0 {
			props := s.links[0].props
			if len(data) > props.MaxMessageSize {
				s.mu.Unlock()
				return &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: %d bytes, the channel's limit is %d", ErrTooLarge, len(data), props.MaxMessageSize)}
			}
			if s.bcast {
				if ok := s.broadcastLocked(data); ok {
					s.mu.Unlock()
					return nil
				}
			} else if s.orphans.len() == 0 {
				if l := s.pickLocked(); l != nil {
					if fds != nil && l.c.uc == nil && l.c.fc == nil {
						s.mu.Unlock()
						return &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: files need a Unix socket, %s is reached another way", ErrUnsupported, l.remote)}
					}
					s.nextID++
					id := s.nextID
					lent, fc := false, (*conn)(nil)
					if fds == nil && len(data) >= bigMessage && l.c.fc != nil {
						lent, fc = s.lendLocked(l, id, data)
					}
					if !lent {
						var rec []byte
						fresh := fds == nil && len(data) >= bigMessage // copied by putLocked
						if !fresh && (l.props.Delivery != AtMostOnce || len(data) >= bigMessage) {
							data, rec = s.keepRec(id, data) // large payloads are written from this copy
						}
						fc = s.putLocked(l, id, data, rec, fds, fresh)
					}
					s.sentN++
					if l.props.Capacity == 0 && block {
						if fc != nil {
							fc.signal()
						}
						return s.waitTakenLocked(ctx, l, id)
					}
					s.mu.Unlock()
					if fc != nil {
						fc.flushNow()
					}
					if block && l.c.backlog.Load() > highWater {
						if err := l.c.waitDrain(ctx); err != nil {
							return &OpError{Op: "send", Name: s.name, Err: err}
						}
					}
					return nil
				}
			}
			if !block || props.OnFull == FailWhenFull {
				s.mu.Unlock()
				return &OpError{Op: "send", Name: s.name, Err: ErrFull}
			}
		} else if s.hadLinks || !block {
			err := s.errGoneLocked()
			if !s.hadLinks {
				err = &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: no receiver attached yet", ErrFull)}
			}
			s.mu.Unlock()
			s.node.kickDiscovery()
			return err
		}
		// Wait for credit, a new link, or the end.
		if err := s.waitLocked(ctx, len(s.links) == 0); err != nil {
			s.mu.Unlock()
			return &OpError{Op: "send", Name: s.name, Err: err}
		}
	}
}

// waitTakenLocked waits until message id was taken by a receiver. Called
// with s.mu held; returns with it released.
func (s *Sender) waitTakenLocked(ctx context.Context, l *link, id uint64) error {
	ch := make(chan struct{})
	s.syncs[id] = ch
	// Counted as a waiter, so that a reader does not leave the ACK this
	// waits for (see ack); one left already is applied here.
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	if s.acksLeft.Load() {
		s.takeLeftAcksLocked()
	}
	s.mu.Unlock()
	l.c.waitingOn(false)
	defer l.c.doneWaiting(false)
	select {
	case <-ch:
		s.mu.Lock()
		defer s.mu.Unlock()
		// Closed either by the ack, or by an AtMostOnce link's death.
		if l.dead && l.taken < l.sent && l.props.Delivery == AtMostOnce {
			return &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: receiver died before taking the message", ErrPeerGone)}
		}
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.syncs, id)
		s.mu.Unlock()
		return &OpError{Op: "send", Name: s.name, Err: ctx.Err()}
	}
}

// broadcastLocked sends data to every live link if all have credit.
func (s *Sender) broadcastLocked(data []byte) bool {
	for _, l := range s.links {
		if l.sent >= l.limit {
			return false
		}
	}
	s.nextID++
	if len(data) >= bigMessage {
		data = s.keep(s.nextID, data) // written from this copy, not the caller's
	}
	for _, l := range s.links {
		if c := s.putLocked(l, s.nextID, data, nil, nil, false); c != nil {
			c.signal()
		}
	}
	s.sentN++
	return true
}

// Close detaches from every receiver. Messages not yet acknowledged are
// dropped from the sender's memory; call Flush first to wait for them.
func (s *Sender) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	links := s.links
	s.links = nil
	for _, l := range links {
		l.retireLocked(math.MaxUint64)
	}
	for _, ch := range s.syncs {
		close(ch)
	}
	clear(s.syncs)
	s.notifyLocked()
	s.mu.Unlock()
	s.node.removeSender(s)
	for _, l := range links {
		l.c.detachLink(l.id)
	}
	return nil
}

// WaitReceivers waits until at least n receivers are attached, or ctx
// ends. It is for the moments where "whoever is there now" is not enough:
// a publisher that must not start before its subscribers, a test.
func (s *Sender) WaitReceivers(ctx context.Context, n int) error {
	s.mu.Lock()
	for {
		live := 0
		for _, l := range s.links {
			if !l.dead {
				live++
			}
		}
		if live >= n {
			s.mu.Unlock()
			return nil
		}
		if s.closed {
			s.mu.Unlock()
			return &OpError{Op: "wait", Name: s.name, Err: ErrClosed}
		}
		if err := s.waitLocked(ctx, true); err != nil {
			s.mu.Unlock()
			return &OpError{Op: "wait", Name: s.name, Err: err}
		}
	}
}

// Flush waits until every message sent so far was acknowledged by a
// receiver (for AtMostOnce: taken or lost), or ctx ends.
func (s *Sender) Flush(ctx context.Context) error {
	var asked time.Time
	s.mu.Lock()
	for {
		pending := s.orphans.len()
		for _, l := range s.links {
			pending += int(l.sent - l.taken)
		}
		if pending == 0 {
			s.mu.Unlock()
			return nil
		}
		if s.orphans.len() > 0 {
			s.resendLocked()
		}
		if s.closed {
			s.mu.Unlock()
			return &OpError{Op: "flush", Name: s.name, Err: ErrClosed}
		}
		// Ask the receivers for their ACKs now rather than lazily, and
		// again while the wait goes on.
		if time.Since(asked) > ackNowFor/2 {
			asked = time.Now()
			for _, l := range s.links {
				if l.sent > l.taken {
					l.c.askAcks()
				}
			}
		}
		wctx, cancel := context.WithTimeout(ctx, ackNowFor/2)
		err := s.waitLocked(wctx, false)
		cancel()
		if err != nil && ctx.Err() != nil {
			s.mu.Unlock()
			return &OpError{Op: "flush", Name: s.name, Err: ctx.Err()}
		}
	}
}
