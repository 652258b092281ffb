package loft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/loft-ipc/loft/wire"
	"golang.org/x/sys/unix"
)

// conn is one connection between two nodes, used in both directions: either
// side attaches its senders to the other's receivers, so the data of one
// direction and the acks of the other share writes. Attachment ids are
// chosen by the side that attaches; links holds ours, inAtts the peer's.
//
// Goroutines: one reader and one writer per conn. Locks: wmu guards the
// output buffer and the dirty-ack list; lmu guards the attachment tables.
// Lock order: Sender.mu -> conn.wmu and Receiver.mu -> conn.wmu; wmu is a
// leaf, never held while calling into a Sender or Receiver.
type conn struct {
	node     *Node
	nc       net.Conn
	uc       *net.UnixConn             // non-nil on Unix sockets: files can be passed
	wr       *rawWriter                // non-nil on Unix and TCP sockets
	rr       *rawReader                // non-nil on TCP sockets (Unix sockets have fdReader)
	fc       fileConn                  // non-nil on shared memory: files go on the side socket
	tw       func([]byte) (int, error) // writes what the transport takes without waiting; nil if it cannot (see flushNoWait)
	remoteID string
	dialed   bool
	hb       bool // heartbeats on (TCP)
	nosum    bool // set by the handshake: frames carry no checksum (wire.FlagNoSum)

	wmu           sync.Mutex
	out, spare    []byte
	unsealed      [][2]int // [start, end) in out of DATA frames still to seal
	unsealedSpare [][2]int
	openAtt       uint32
	openOff       int    // offset of the open DATA frame, -1 if none
	openSeq       bool   // the open DATA frame is sequential (wire.FlagSeq)
	openNext      uint64 // the id a message must have to join it
	marks         []fileMark
	segs          []bigSeg
	segBytes      int
	dirty         []*inAtt
	urgentAcks    int // urgent ACKs scheduled (guarded by wmu; for tests)
	handedAcks    int // of which handed to the writer goroutine (guarded by wmu; for tests)
	ackTimer      *time.Timer
	ackArmed      bool
	ackNow        atomic.Int64 // until then (monoNow) ACKs are urgent: a peer's Flush waits
	answering     atomic.Bool  // a message from this conn was taken since the last write
	flushing      bool
	kick          chan struct{}
	lastWrite     atomic.Int64  // monoNow of the last write
	backlog       atomic.Int64  // bytes queued in out
	drained       chan struct{} // closed and replaced after each write; guarded by wmu
	drainWaiters  int

	lmu     sync.Mutex
	nextAtt uint32
	links   map[uint32]*link // dialer side
	waits   map[uint32]chan attachReply
	inAtts  map[uint32]*inAtt  // acceptor side
	pool    *outPool           // loans we send, created on first use
	inPools map[uint64]*inPool // loans the peer sends

	fdq    []int    // files received and not yet claimed by a frame (reader only)
	recs   []record // the records of a DATA frame being delivered (reader only)
	carved []byte   // the rest of the chunk lent messages are copied into (reader only)

	// Reading. One goroutine at a time holds the read baton and reads and
	// handles frames: the conn's background reader, or a goroutine in
	// Receiver.Recv reading for itself so that no hand-off between
	// goroutines sits between the socket and the application (see
	// readFrames and ARCHITECTURE.md).
	rmu       sync.Mutex
	rholder   int8         // readFree, readBG or readDirect; guarded by rmu
	rd        *wire.Reader // baton holder only
	rkick     chan struct{}
	rtimer    *time.Timer   // hands reading back to the background reader
	rarmed    bool          // rtimer is set; guarded by rmu
	relSeq    uint64        // releases of the baton; guarded by rmu
	armSeq    uint64        // relSeq when rtimer was set; guarded by rmu
	stealer   *Receiver     // a Recv that asked the background reader for the baton; guarded by rmu
	bgLast    atomic.Int64  // when the background reader last handled a frame (monoNow)
	handBacks atomic.Int64  // times rtimer called the background reader (for tests)
	slow      atomic.Int32  // goroutines waiting for what this conn brings that cannot read it themselves
	parked    atomic.Int32  // Recv calls that could read this conn themselves but wait for a holder to deliver
	direct    bool          // Recv may read this conn itself (reads end on a deadline)
	rintr     atomic.Uint64 // read interruptions asked for (see interruptRead)
	rseen     uint64        // baton holder only: interruptions already seen
	poller    readPoller    // set when reads may busy-poll (Options.BusyPoll on shared memory)
	polling   bool          // baton holder only: reads busy-poll now
	lazyCtx   bool          // a Recv reading arms its context's cancellation in readWaiting
	dr        *Receiver     // baton holder only: the Receiver whose Recv reads now, if any
	drArmed   bool          // baton holder only: readWaiting armed dr's context
	drGot     bool          // baton holder only: a frame queued messages for dr
	yield     bool          // baton holder only: the last frame brought messages to a waiting Recv that can read for itself

	closed    chan struct{}
	closeOnce sync.Once
	err       error // why it closed; set before closed is closed
}

// fileConn is a connection that passes files beside its byte stream
// (shared memory: on its side socket). Files written before some bytes are
// available to TakeFiles by the time those bytes are read.
type fileConn interface {
	WriteFiles(fds []int) error
	TakeFiles(n int, timeout time.Duration) ([]int, error)
}

// bigSeg is a large payload written straight from the sender's copy, after
// out[:off], instead of being copied into the output buffer.
type bigSeg struct {
	off  int
	data []byte
}

// bigMessage is the size from which a message's payload is not copied into
// the output buffer but written from its own memory (writev on sockets).
const bigMessage = 32 << 10

type fileMark struct {
	off int
	fds []int
}

type attachReply struct {
	props ChannelOptions
	limit uint64
	err   error
}

// Channel kinds as they travel in ATTACH.
const (
	kindChannel = "chan"
	kindTopic   = "topic"
	kindInbox   = "inbox"
)

func newConn(n *Node, nc net.Conn, dialed bool) *conn {
	c := &conn{
		node:    n,
		nc:      nc,
		dialed:  dialed,
		openOff: -1,
		kick:    make(chan struct{}, 1),
		rkick:   make(chan struct{}, 1),
		drained: make(chan struct{}),
		links:   map[uint32]*link{},
		waits:   map[uint32]chan attachReply{},
		inAtts:  map[uint32]*inAtt{},
		closed:  make(chan struct{}),
	}
	// The background reader owns the baton from the start: it is set up
	// here, before the conn is shared, and readLoop finds it kicked.
	c.rholder = readBG
	c.rkick <- struct{}{}
	c.rtimer = time.AfterFunc(time.Hour, c.handBack)
	c.rtimer.Stop()
	switch x := nc.(type) {
	case *net.UnixConn:
		c.uc = x
		c.direct = true
		c.wr = newRawWriter(x)
	case fileConn:
		c.fc = x
		c.direct = true
	default:
		c.hb = true // TCP and anything else without a kernel hang-up signal
		c.direct = true
		if t, ok := nc.(*net.TCPConn); ok {
			c.wr, c.rr = newRawWriter(t), newRawReader(t)
		}
	}
	if t, ok := nc.(interface{ TryWrite([]byte) (int, error) }); ok {
		c.tw = t.TryWrite // shared memory
	} else if c.wr != nil {
		c.tw = c.wr.try
	}
	if p, ok := nc.(readPoller); ok && n.opts.BusyPoll {
		c.poller, c.polling = p, true
	}
	if h, ok := nc.(waitHooker); ok {
		h.SetReadWaitHook(c.readWaiting)
		c.lazyCtx = true
	}
	return c
}

// waitHooker is a connection that tells its reader when a read starts to
// wait for long (shmconn.Conn.SetReadWaitHook).
type waitHooker interface{ SetReadWaitHook(f func()) }

// readWaiting is called on the baton holder's goroutine when its read has
// waited a while. A Recv reading for itself arms the cancellation of its
// context only now (Receiver.watchCtxLocked costs two allocations): most
// reads of a busy conn are served while spinning, and a context per call
// would pay that on every Recv.
func (c *conn) readWaiting() {
	r := c.dr
	if r == nil || c.drArmed {
		return
	}
	c.drArmed = true
	r.mu.Lock()
	if r.dreading == c && r.dctx != nil {
		r.watchCtxLocked(r.dctx)
	}
	r.mu.Unlock()
}

// readPoller is a connection that can busy-poll its reads
// (shmconn.Conn.SetReadPoll).
type readPoller interface{ SetReadPoll(on bool) }

// pollFor makes reads busy-poll for a Recv reading for itself, and not
// for the background reader, which serves nobody in particular: a poller
// on an idle conn would take a core from one that matters. The caller
// holds the baton.
func (c *conn) pollFor(direct bool) {
	if c.poller != nil && c.polling != direct {
		c.poller.SetReadPoll(direct)
		c.polling = direct
	}
}

// seal finishes the frame at b[off:] (see wire.Seal): its length, and its
// checksum unless the handshake agreed on none.
func (c *conn) seal(b []byte, off int) {
	if c.nosum {
		wire.SetLength(b, off)
	} else {
		wire.Seal(b, off)
	}
}

// sealSplit is seal for a frame kept apart as head and tail.
func (c *conn) sealSplit(head, tail []byte) {
	if c.nosum {
		wire.SetLengthSplit(head, len(tail))
	} else {
		wire.SealSplit(head, tail)
	}
}

// handshake exchanges HELLO frames. It runs before the goroutines start.
// On a Unix socket or shared memory both sides offer wire.FlagNoSum, and
// when both did, frames after the handshake carry no checksum: the kernel
// copies a Unix socket's bytes, and a peer that can write into the rings
// can as well checksum what it wrote, so on these transports a CRC32C
// catches nothing; it cost a tenth of a small message's way through loft.
// TCP keeps it (a bit flip there gets past TCP's own checksum now and
// then).
func (c *conn) handshake(ctx context.Context) error {
	local := c.uc != nil || c.fc != nil
	var offer uint16
	if local {
		offer = wire.FlagNoSum
	}
	dl := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	c.nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Now()) })
	defer func() {
		stop()
		c.nc.SetDeadline(time.Time{})
	}()
	r := wire.NewReader(c.nc, 4096)
	c.rd = r // what the peer sent right after its HELLO stays buffered for readFrames
	hello := func(t wire.Type, flags uint16) error {
		p := wire.AppendUvarint(nil, wire.Version)
		p = wire.AppendString(p, c.node.id)
		_, err := c.nc.Write(wire.AppendFrame(nil, t, flags, p))
		return err
	}
	read := func(want wire.Type) (uint16, error) {
		f, err := r.Next()
		if err != nil {
			return 0, err
		}
		if f.Type != want {
			return 0, fmt.Errorf("%w: got %s, want %s", ErrProtocol, f.Type, want)
		}
		d := wire.NewDecoder(f.Payload)
		v := d.Uvarint()
		id := d.String(128)
		if err := d.End(); err != nil {
			return 0, err
		}
		if v != wire.Version {
			return 0, fmt.Errorf("%w: peer speaks version %d", wire.ErrVersion, v)
		}
		c.remoteID = id
		return f.Flags, nil
	}
	noSum := func() {
		c.nosum = true
		r.SkipChecksums()
	}
	if c.dialed {
		if err := hello(wire.THello, offer); err != nil {
			return err
		}
		flags, err := read(wire.THelloAck)
		if err == nil && flags&wire.FlagUseMine != 0 {
			err = errUseTheirs
		}
		if err == nil && local && flags&wire.FlagNoSum != 0 {
			noSum()
		}
		return err
	}
	flags, err := read(wire.THello)
	if err != nil {
		return err
	}
	if flags&wire.FlagNoSum == 0 {
		offer = 0
	}
	if r.Buffered() != 0 {
		return fmt.Errorf("%w: data before handshake completed", ErrProtocol)
	}
	switch c.node.admit(c) {
	case admitClosed:
		return ErrClosed
	case admitDecline:
		hello(wire.THelloAck, wire.FlagUseMine)
		return errUseMine
	}
	if err := hello(wire.THelloAck, offer); err != nil {
		c.node.unadmit(c)
		return err
	}
	if offer != 0 {
		noSum()
	}
	return nil
}

// Handshake outcomes of a simultaneous dial (see Node.admit): one
// connection is kept between two nodes.
var (
	errUseMine   = errors.New("declined: we dialled the peer too, and our connection is kept")
	errUseTheirs = errors.New("declined by the peer: it dialled us too, and its connection is kept")
)

func (c *conn) start() {
	c.lastWrite.Store(monoNow())
	var src io.Reader = c.nc
	if c.uc != nil {
		src = newFDReader(c)
	} else if c.hb {
		src = hbReader{c: c}
	}
	if c.rd == nil {
		c.rd = wire.NewReader(src, c.node.maxFrame)
	} else {
		c.rd.Reset(src, c.node.maxFrame)
	}
	go c.readLoop()
	go c.writeLoop()
}

// close ends the connection once, failing every attachment on it.
func (c *conn) close(err error) {
	c.closeOnce.Do(func() {
		if err == nil {
			err = ErrClosed
		}
		c.err = err
		close(c.closed)
		c.nc.Close()
		c.lmu.Lock()
		links := c.links
		ins := c.inAtts
		waits := c.waits
		c.links, c.inAtts, c.waits = map[uint32]*link{}, map[uint32]*inAtt{}, map[uint32]chan attachReply{}
		c.lmu.Unlock()
		for _, w := range waits {
			w <- attachReply{err: fmt.Errorf("%w: connection to %s closed: %v", ErrPeerGone, c.remoteID, err)}
		}
		for _, l := range links {
			l.s.linkDown(l, err)
		}
		for _, a := range ins {
			a.r.detach(a)
		}
		c.wmu.Lock()
		for _, m := range c.marks {
			for _, fd := range m.fds {
				unix.Close(fd)
			}
		}
		c.marks = nil
		c.wmu.Unlock()
		for _, fd := range c.fdq {
			unix.Close(fd)
		}
		c.fdq = nil
		c.closePools()
		c.wmu.Lock()
		if c.ackTimer != nil {
			c.ackTimer.Stop()
		}
		c.wmu.Unlock()
		c.node.dropConn(c)
	})
}

// shutdown says goodbye: it queues CLOSE behind everything already queued,
// waits up to timeout for the writer to get it all out, then closes.
func (c *conn) shutdown(timeout time.Duration) {
	if c.isClosed() {
		return
	}
	c.sendFrame(wire.TClose, wire.AppendString(nil, "node closing"))
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.wmu.Lock()
		idle := !c.flushing && len(c.out) == 0
		ch := c.drained
		c.drainWaiters++
		c.wmu.Unlock()
		if idle {
			c.wmu.Lock()
			c.drainWaiters--
			c.wmu.Unlock()
			break
		}
		var stop bool
		select {
		case <-ch:
		case <-c.closed:
			stop = true
		case <-deadline.C:
			stop = true
		}
		c.wmu.Lock()
		c.drainWaiters--
		c.wmu.Unlock()
		if stop {
			break
		}
	}
	c.close(ErrClosed)
}

func (c *conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// ---- writing ----

// wakeLocked arranges for the writer to run. Caller holds wmu; if it returns
// true the caller must call c.signal() after unlocking.
func (c *conn) wakeLocked() bool {
	if c.flushing {
		return false
	}
	c.flushing = true
	return true
}

func (c *conn) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// closeOpenLocked ends the DATA frame being extended, if any.
func (c *conn) closeOpenLocked() {
	if c.openOff >= 0 {
		c.unsealed = append(c.unsealed, [2]int{c.openOff, len(c.out)})
		c.openOff = -1
	}
}

// appendAcksLocked turns the scheduled ACKs into frames. Caller holds wmu.
func (c *conn) appendAcksLocked() {
	for _, a := range c.dirty {
		a.dirty = false
		a.ackQueued.Store(false) // (then the counters: see scheduleAckLocked)
		a.ackUrgent.Store(false)
		taken, limit := a.ackTaken.Load(), a.ackLimit.Load()
		a.told.Store(limit)
		a.toldTaken.Store(taken)
		c.closeOpenLocked()
		off := len(c.out)
		c.out = wire.AppendHeader(c.out, wire.TAck, 0)
		c.out = binary.AppendUvarint(c.out, uint64(a.id))
		c.out = binary.AppendUvarint(c.out, taken)
		c.out = binary.AppendUvarint(c.out, limit)
		c.seal(c.out, off)
	}
	c.dirty = c.dirty[:0]
}

// sendFrame queues a control frame, after any scheduled ACK so that a
// DETACH never overtakes the ACK of messages taken before it.
func (c *conn) sendFrame(t wire.Type, payload []byte) {
	if c.queueFrame(t, payload) {
		c.signal()
	}
}

// sendFrameNow is sendFrame for a frame the peer waits for (a RELEASE of a
// loan): the calling goroutine writes it, without waiting (flushNoWait),
// instead of waking the writer goroutine, which on a busy machine waited
// for a thread while the peer's loan pool ran dry.
func (c *conn) sendFrameNow(t wire.Type, payload []byte) {
	if c.queueFrame(t, payload) {
		c.flushNoWait()
	}
}

// queueFrame queues a control frame (see sendFrame) and reports whether
// the caller now owns the flush.
func (c *conn) queueFrame(t wire.Type, payload []byte) bool {
	c.wmu.Lock()
	c.appendAcksLocked()
	c.closeOpenLocked()
	c.out = wire.AppendFrame(c.out, t, 0, payload)
	w := c.wakeLocked()
	c.wmu.Unlock()
	return w
}

// maxOpenFrame bounds how many bytes one DATA frame collects before a new
// one is started.
const maxOpenFrame = 64 << 10

// appendData queues one message on attachment att. Caller holds wmu.
// floor gives the sender's lowest unacknowledged id (for de-duplication);
// it is only called when a new frame starts. A frame opened for a message
// is sequential (FlagSeq: the first id once, then lengths and bytes) and
// stays so while the ids that follow are consecutive; a message whose id
// is not the next opens a frame with an id per record.
func (c *conn) appendDataLocked(att uint32, floor func() uint64, id uint64, data []byte) {
	if need := len(data) + 3*binary.MaxVarintLen64 + wire.HeaderSize + 2*binary.MaxVarintLen32; cap(c.out)-len(c.out) < need {
		c.out = growOut(c.out, need)
	}
	if c.openOff >= 0 && c.openAtt == att && len(c.out)-c.openOff <= maxOpenFrame {
		if !c.openSeq {
			c.out = binary.AppendUvarint(c.out, id)
			c.out = binary.AppendUvarint(c.out, uint64(len(data)))
			c.out = append(c.out, data...)
			return
		}
		if id == c.openNext {
			c.openNext++
			c.out = binary.AppendUvarint(c.out, uint64(len(data)))
			c.out = append(c.out, data...)
			return
		}
	}
	seq := c.openOff < 0 || c.openAtt != att || !c.openSeq || len(c.out)-c.openOff > maxOpenFrame
	c.closeOpenLocked()
	c.openOff = len(c.out)
	c.openAtt = att
	c.openSeq = seq
	c.openNext = id + 1
	flags := uint16(0)
	if seq {
		flags = wire.FlagSeq
	}
	c.out = wire.AppendHeader(c.out, wire.TData, flags)
	c.out = binary.AppendUvarint(c.out, uint64(att))
	c.out = binary.AppendUvarint(c.out, floor())
	c.out = binary.AppendUvarint(c.out, id) // the first id, or this record's
	c.out = binary.AppendUvarint(c.out, uint64(len(data)))
	c.out = append(c.out, data...)
}

// growOut returns out with room for n more bytes: at least twice as large
// and at least 64 KiB, in memory that is not zeroed first (append's growth
// clears the new tail, and a sender's output buffer is written once per
// burst from start to end; see wire.Alloc).
func growOut(out []byte, n int) []byte {
	nb := wire.Alloc(max(2*cap(out), len(out)+n, 64<<10))
	return nb[:copy(nb, out)]
}

// appendBigLocked queues a frame sealed by the caller: head is its header
// and leading payload, payload the rest, referenced and not copied.
func (c *conn) appendBigLocked(head, payload []byte) {
	c.closeOpenLocked()
	c.out = append(c.out, head...)
	c.segs = append(c.segs, bigSeg{off: len(c.out), data: payload})
	c.segBytes += len(payload)
}

// appendFilesLocked queues one message with files as a frame of its own.
// The fds are duplicates owned by the conn from now on.
func (c *conn) appendFilesLocked(att uint32, floor, id uint64, data []byte, fds []int) {
	c.closeOpenLocked()
	off := len(c.out)
	c.out = wire.AppendHeader(c.out, wire.TData, wire.FlagFiles)
	c.out = binary.AppendUvarint(c.out, uint64(att))
	c.out = binary.AppendUvarint(c.out, floor)
	c.out = binary.AppendUvarint(c.out, id)
	c.out = binary.AppendUvarint(c.out, uint64(len(data)))
	c.out = append(c.out, data...)
	c.out = binary.AppendUvarint(c.out, uint64(len(fds)))
	c.unsealed = append(c.unsealed, [2]int{off, len(c.out)})
	c.marks = append(c.marks, fileMark{off: off, fds: fds})
}

// highWater is how many bytes may wait in a conn's output buffer before
// senders wait for the writer: the socket's own buffer is the real queue.
const highWater = 4 << 20

// waitDrain blocks while the output buffer is over highWater.
func (c *conn) waitDrain(ctx context.Context) error {
	for c.backlog.Load() > highWater {
		c.wmu.Lock()
		ch := c.drained
		c.drainWaiters++
		c.wmu.Unlock()
		var err error
		if c.backlog.Load() > highWater {
			select {
			case <-ch:
			case <-c.closed:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		c.wmu.Lock()
		c.drainWaiters--
		c.wmu.Unlock()
		if err != nil || c.isClosed() {
			return err
		}
	}
	return nil
}

// markAck schedules an ACK for a. An urgent ACK is written now; a lazy one
// rides with the next write, or goes after ackDelay at the latest. A
// sender that waits for ACKs (Flush) asks for them (PING with ACKNOW).
func (c *conn) markAck(a *inAtt, urgent bool) {
	c.wmu.Lock()
	if !a.dirty {
		a.dirty = true
		c.dirty = append(c.dirty, a)
	}
	if !urgent {
		c.armLazyLocked()
		c.wmu.Unlock()
		return
	}
	c.urgentAcks++
	w := c.wakeLocked()
	if w {
		c.handedAcks++
	}
	c.wmu.Unlock()
	if w {
		c.signal()
	}
}

// markAckOwned is markAck for an urgent ACK that the caller writes itself
// (see Receiver.takeAckLocked): it reports whether the caller now owns the
// flush (then it must call flushNoWait); if not, a flush in progress writes
// the ACK. Caller may hold the receiver's lock, never wmu.
func (c *conn) markAckOwned(a *inAtt) bool {
	c.wmu.Lock()
	if !a.dirty {
		a.dirty = true
		c.dirty = append(c.dirty, a)
	}
	c.urgentAcks++
	w := c.wakeLocked()
	c.wmu.Unlock()
	return w
}

// maxInlineAck bounds what flushNoWait writes on a receiving goroutine: ACKs,
// and whatever small frames were queued with them.
const maxInlineAck = 16 << 10

// flushNoWait is the flush of an urgent ACK by the goroutine whose take
// made it due (markAckOwned), or of a frame the peer waits for
// (sendFrameNow), by a caller that owns the flush. It never waits: it writes
// what the transport takes at once (a shared-memory ring with room, a
// socket's buffer), under wmu so that nothing is queued behind a part left
// over, and hands the rest, or output it should not write (large, with
// files, a transport without such a write), to the writer goroutine. A
// Recv therefore never blocks on a peer that stopped reading.
func (c *conn) flushNoWait() {
	c.wmu.Lock()
	if !c.queuedLocked() {
		c.wmu.Unlock()
		return
	}
	if c.tw == nil || len(c.segs) > 0 || len(c.marks) > 0 || len(c.out) > maxInlineAck {
		c.handedAcks++
		c.wmu.Unlock()
		c.signal()
		return
	}
	for _, u := range c.unsealed {
		c.seal(c.out[:u[1]], u[0])
	}
	c.unsealed = c.unsealed[:0]
	n, err := c.tw(c.out)
	if err != nil {
		c.wmu.Unlock()
		c.close(fmt.Errorf("write: %w", err))
		return
	}
	c.out = c.out[:copy(c.out, c.out[n:])]
	if c.backlog.Load() != 0 {
		c.backlog.Store(int64(len(c.out))) // (see putLocked and waitDrain)
	}
	if n > 0 {
		if c.answering.Load() {
			c.answering.Store(false)
		}
		if c.drainWaiters > 0 {
			close(c.drained)
			c.drained = make(chan struct{})
		}
		if c.hb {
			c.lastWrite.Store(monoNow()) // (see flushOnce)
		}
	}
	more := len(c.out) > 0 || len(c.dirty) > 0
	if !more {
		c.flushing = false
	}
	c.wmu.Unlock()
	if more {
		c.signal()
	}
}

// flushOwned writes what is queued, for a caller that owns the flush
// (wakeLocked returned true), at once and whatever the time since the
// last write; the writer goroutine goes on if more came meanwhile.
func (c *conn) flushOwned() {
	more, err := c.flushOnce()
	if err != nil {
		c.close(fmt.Errorf("write: %w", err))
		return
	}
	if more {
		c.signal()
	}
}

// ackDelay bounds how long a lazy ACK waits for a write to ride on, when
// the receiver keeps a message and reads nothing more. The timer is set
// once per ackDelay at most, not per message (arming one can wake the
// netpoller's thread), and not more often for the reason given at
// readHandBack.
const ackDelay = 20 * time.Millisecond

// armLazyLocked makes sure what waits for the next write (lazy ACKs,
// lazy frames) goes within ackDelay. Caller holds wmu.
func (c *conn) armLazyLocked() {
	if !c.ackArmed {
		c.ackArmed = true
		if c.ackTimer == nil {
			c.ackTimer = time.AfterFunc(ackDelay, c.ackDue)
		} else {
			c.ackTimer.Reset(ackDelay)
		}
	}
}

// sendLazy queues a control frame that need not go at once: it rides on
// the next write (a reply, an ACK), or goes within ackDelay, without a
// write of its own.
func (c *conn) sendLazy(t wire.Type, payload []byte) {
	c.wmu.Lock()
	c.closeOpenLocked()
	c.out = wire.AppendFrame(c.out, t, 0, payload)
	c.armLazyLocked()
	c.wmu.Unlock()
}

func (c *conn) ackDue() {
	c.wmu.Lock()
	c.ackArmed = false
	w := (len(c.dirty) > 0 || len(c.out) > 0) && c.wakeLocked()
	c.wmu.Unlock()
	if w {
		c.signal()
	}
}

func (c *conn) writeLoop() {
	defer c.node.wg.Done()
	var ticker *time.Ticker
	var tick <-chan time.Time
	if c.hb {
		ticker = time.NewTicker(c.node.hbInterval)
		defer ticker.Stop()
		tick = ticker.C
	}
	for {
		select {
		case <-c.kick:
		case <-c.closed:
			return
		case <-tick:
			if time.Duration(monoNow()-c.lastWrite.Load()) >= c.node.hbInterval/2 {
				c.sendFrame(wire.TPing, nil)
			}
			continue
		}
		for {
			more, err := c.flushOnce()
			if err != nil {
				c.close(fmt.Errorf("write: %w", err))
				return
			}
			if !more {
				break
			}
		}
	}
}

// idleGap is how long a connection must have been quiet for a sender to
// write its message itself instead of handing it to the writer goroutine:
// a lone message then costs no goroutine wake-up, while a burst still
// travels in few writes.
const idleGap = 5 * time.Microsecond

// flushNow is called by a goroutine that just queued data and won the right
// to flush (wakeLocked returned true). On an idle connection it writes at
// once itself; otherwise, or if more was queued meanwhile, the writer
// goroutine takes over.
func (c *conn) flushNow() {
	// A message sent right after a lone message was taken from this conn
	// is an answer, not part of a burst: it goes at once even on a
	// connection that wrote a moment ago (a fast ping-pong). With several
	// requests queued, answers are bundled like any burst.
	if !c.answering.Load() && monoNow()-c.lastWrite.Load() < int64(idleGap) {
		c.signal()
		return
	}
	c.flushOwned()
}

// queuedLocked turns the scheduled ACKs into frames and ends the open DATA
// frame, for a flush; if nothing is queued it gives up flushing and
// reports false. Caller holds wmu and owns flushing.
func (c *conn) queuedLocked() bool {
	c.appendAcksLocked()
	c.closeOpenLocked()
	if len(c.out) == 0 {
		c.flushing = false
		return false
	}
	return true
}

// flushOnce writes everything queued, acks included, in one write. The
// caller owns flushing. It reports whether more was queued while it wrote,
// and if not gives up flushing in the same hold of wmu that saw nothing
// (a lone message's write takes wmu twice, not three times).
func (c *conn) flushOnce() (bool, error) {
	c.wmu.Lock()
	if !c.queuedLocked() {
		c.wmu.Unlock()
		return false, nil
	}
	// Atomic stores below only when something changes: each is a locked
	// instruction, and this is every write's path.
	answer := c.answering.Load()
	if answer {
		c.answering.Store(false)
	}
	buf, unsealed, marks, segs := c.out, c.unsealed, c.marks, c.segs
	c.out, c.spare = c.spare[:0], nil
	c.unsealed, c.marks, c.segs, c.segBytes = c.unsealedSpare[:0], nil, nil, 0
	if c.backlog.Load() != 0 {
		c.backlog.Store(0)
	}
	c.wmu.Unlock()
	for _, u := range unsealed {
		c.seal(buf[:u[1]], u[0])
	}
	var err error
	if len(segs) > 0 {
		buf, err = c.writeSegs(buf, segs, marks)
	}
	if err == nil {
		err = c.write(buf, marks)
	}
	if !answer || c.hb {
		// An answer's write is not timed (a clock read per round trip
		// costs 3% of a shared-memory one): lastWrite only tells flushNow
		// whether a burst is on, and answers skip that check anyway. The
		// heartbeat, which needs every write, times them all.
		c.lastWrite.Store(monoNow())
	}
	c.wmu.Lock()
	if cap(buf) <= 4*highWater {
		c.spare = buf[:0]
	}
	c.unsealedSpare = unsealed[:0]
	if c.drainWaiters > 0 {
		close(c.drained)
		c.drained = make(chan struct{})
	}
	more := err == nil && (len(c.out) > 0 || len(c.dirty) > 0)
	if !more && err == nil {
		c.flushing = false
	}
	c.wmu.Unlock()
	return more, err
}

// writeSegs writes buf with the large payloads in segs spliced in, in one
// writev where the transport has it. With files to pass as well (rare), the
// payloads are copied into one buffer for write to handle.
func (c *conn) writeSegs(buf []byte, segs []bigSeg, marks []fileMark) ([]byte, error) {
	if len(marks) > 0 {
		orig := make([]int, len(marks))
		for i := range marks {
			orig[i] = marks[i].off
		}
		var flat []byte
		prev := 0
		for _, s := range segs {
			flat = append(flat, buf[prev:s.off]...)
			flat = append(flat, s.data...)
			for i := range marks {
				if orig[i] >= s.off {
					marks[i].off += len(s.data)
				}
			}
			prev = s.off
		}
		return append(flat, buf[prev:]...), nil
	}
	bufs := make(net.Buffers, 0, 2*len(segs)+1)
	prev := 0
	for _, s := range segs {
		if s.off > prev {
			bufs = append(bufs, buf[prev:s.off])
		}
		bufs = append(bufs, s.data)
		prev = s.off
	}
	if prev < len(buf) {
		bufs = append(bufs, buf[prev:])
	}
	_, err := bufs.WriteTo(c.nc)
	return nil, err
}

func (c *conn) write(buf []byte, marks []fileMark) error {
	for _, m := range marks {
		if m.off > 0 {
			if _, err := c.nc.Write(buf[:m.off]); err != nil {
				closeFDs(marks)
				return err
			}
		}
		end := m.off + wire.HeaderSize + int(binary.LittleEndian.Uint32(buf[m.off+4:]))
		var n int
		var err error
		if c.fc != nil {
			if err = c.fc.WriteFiles(m.fds); err == nil {
				n, err = c.nc.Write(buf[m.off:end])
			}
		} else {
			n, _, err = c.uc.WriteMsgUnix(buf[m.off:end], unix.UnixRights(m.fds...), nil)
		}
		for _, fd := range m.fds {
			unix.Close(fd)
		}
		m.fds = nil
		if err != nil {
			return err
		}
		if n < end-m.off {
			if _, err := c.nc.Write(buf[m.off+n : end]); err != nil {
				return err
			}
		}
		buf = buf[end:]
		for i := range marks {
			marks[i].off -= end
		}
	}
	if len(buf) > 0 {
		if c.wr != nil {
			return c.wr.write(buf)
		}
		_, err := c.nc.Write(buf)
		return err
	}
	return nil
}

// rawWriter writes a socket with a raw write system call: the socket does
// not block (a full one makes it wait in the netpoller, as net.Conn's Write
// does), so the runtime's entry into a blocking system call, which wakes
// its monitor thread when the process was idle, is not needed. On a 2-core
// machine that wake-up is a thread switch on the core the peer wants.
type rawWriter struct {
	raw     syscall.RawConn
	p       []byte
	n       int // written by tryCall
	err     error
	call    func(fd uintptr) bool // built once: no allocation per write
	tryCall func(fd uintptr) bool // call that never waits (see try)
}

func newRawWriter(sc syscall.Conn) *rawWriter {
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawWriter{raw: raw}
	w.call = func(fd uintptr) bool {
		for len(w.p) > 0 {
			n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&w.p[0])), uintptr(len(w.p)))
			switch e {
			case 0:
				w.p = w.p[n:]
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				w.err = os.NewSyscallError("write", e)
				return true
			}
		}
		return true
	}
	w.tryCall = func(fd uintptr) bool {
		for w.n < len(w.p) {
			n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&w.p[w.n])), uintptr(len(w.p)-w.n))
			switch e {
			case 0:
				w.n += int(n)
			case unix.EINTR:
			case unix.EAGAIN:
				return true // full: the rest goes to the writer goroutine
			default:
				w.err = os.NewSyscallError("write", e)
				return true
			}
		}
		return true
	}
	return w
}

// rawReader reads a TCP socket with a raw read system call (see
// rawWriter); the reader holding the baton calls it.
type rawReader struct {
	raw  syscall.RawConn
	p    []byte
	n    int
	err  error
	call func(fd uintptr) bool // built once: no allocation per read
}

func newRawReader(sc syscall.Conn) *rawReader {
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawReader{raw: raw}
	r.call = func(fd uintptr) bool {
		for {
			n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
			switch e {
			case 0:
				r.n = int(n)
				if n == 0 {
					r.err = io.EOF
				}
				return true
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				r.err = os.NewSyscallError("read", e)
				return true
			}
		}
	}
	return r
}

// read reads into p (not empty); a deadline of the conn applies.
func (r *rawReader) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.err = p, 0, nil
	err := r.raw.Read(r.call)
	r.p = nil
	if err == nil {
		err = r.err
	}
	return r.n, err
}

// try writes what of p the socket takes now, without waiting; one flusher
// at a time calls it (see flushNoWait).
func (w *rawWriter) try(p []byte) (int, error) {
	w.p, w.n, w.err = p, 0, nil
	err := w.raw.Write(w.tryCall)
	n := w.n
	w.p = nil
	if err == nil {
		err = w.err
	}
	return n, err
}

// write writes all of p; one flusher at a time calls it (see flushOnce).
func (w *rawWriter) write(p []byte) error {
	w.p, w.err = p, nil
	err := w.raw.Write(w.call)
	w.p = nil
	if err == nil {
		err = w.err
	}
	return err
}

func closeFDs(marks []fileMark) {
	for _, m := range marks {
		for _, fd := range m.fds {
			unix.Close(fd)
		}
	}
}

// ---- reading ----

// fdReader reads a Unix socket with recvmsg, keeping the files that arrive.
type fdReader struct {
	c    *conn
	oob  []byte
	raw  syscall.RawConn
	read func(fd uintptr) bool // built once: no allocation per Read
	p    []byte
	n    int
	oobn int
	err  error
}

func newFDReader(c *conn) *fdReader {
	r := &fdReader{c: c, oob: make([]byte, unix.CmsgSpace(4*64))}
	r.raw, r.err = c.uc.SyscallConn()
	r.read = func(fd uintptr) bool {
		var iov unix.Iovec
		iov.Base = &r.p[0]
		iov.SetLen(len(r.p))
		var msg unix.Msghdr
		msg.Iov = &iov
		msg.Iovlen = 1
		msg.Control = &r.oob[0]
		msg.SetControllen(len(r.oob))
		// (Raw: the socket does not block; see rawWriter.)
		n, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		if e != 0 {
			r.err = os.NewSyscallError("recvmsg", e)
			return true
		}
		r.n, r.oobn = int(n), int(msg.Controllen)
		return true
	}
	return r
}

func (r *fdReader) Read(p []byte) (int, error) {
	if r.raw == nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.oobn, r.err = p, 0, 0, nil
	if err := r.raw.Read(r.read); err != nil {
		return 0, err
	}
	n, oobn, err := r.n, r.oobn, r.err
	r.p = nil
	if err == nil && n == 0 {
		err = io.EOF
	}
	if oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(r.oob[:oobn]); perr == nil {
			for _, m := range msgs {
				if fds, ferr := unix.ParseUnixRights(&m); ferr == nil {
					r.c.fdq = append(r.c.fdq, fds...)
				}
			}
		}
		if len(r.c.fdq) > maxPendingFiles && err == nil {
			// A peer passing files no frame claims would exhaust ours.
			err = protoErr("%d passed files not claimed by any frame", len(r.c.fdq))
		}
	}
	return n, err
}

// maxPendingFiles bounds the files a peer may pass ahead of the frames that
// claim them.
const maxPendingFiles = 256

// maxAttachments bounds the attachments one peer may hold on a connection:
// each gets at least one credit, so their number bounds queued memory.
const maxAttachments = 4096

// hbReader applies the heartbeat timeout to every read.
type hbReader struct {
	c *conn
}

func (r hbReader) Read(p []byte) (int, error) {
	c := r.c
	c.nc.SetReadDeadline(time.Now().Add(c.node.hbTimeout))
	// An interruption (interruptRead) whose deadline the line above just
	// replaced still counts.
	if i := c.rintr.Load(); i != c.rseen {
		c.rseen = i
		return 0, os.ErrDeadlineExceeded
	}
	var n int
	var err error
	if c.rr != nil {
		n, err = c.rr.read(p)
	} else {
		n, err = c.nc.Read(p)
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if i := c.rintr.Load(); i != c.rseen {
			c.rseen = i
			return n, err // interrupted, not silent
		}
		err = fmt.Errorf("%w: no heartbeat from %s for %v", ErrPeerGone, c.remoteID, c.node.hbTimeout)
	}
	return n, err
}

// monoStart anchors monoNow.
var monoStart = time.Now()

// monoNow is a monotonic clock in nanoseconds: one clock read, where
// time.Now costs two (wall and monotonic). It is used on the hot path.
func monoNow() int64 { return int64(time.Since(monoStart)) }

// Holders of the read baton.
const (
	readFree int8 = iota
	readBG
	readDirect
)

// ackNowFor is how long ACKs stay urgent after a PING with ACKNOW.
const ackNowFor = 50 * time.Millisecond

// ackingNow reports whether a peer asked for ACKs at once (see ackNowFor).
func (c *conn) ackingNow() bool {
	until := c.ackNow.Load()
	if until == 0 {
		return false
	}
	if monoNow() < until {
		return true
	}
	// Expired: back to zero, or every message after a peer's Flush would
	// read the clock.
	c.ackNow.CompareAndSwap(until, 0)
	return false
}

// askAcks asks the peer for the ACKs it owes and for ACKs at once for a
// while: a PING with ACKNOW.
func (c *conn) askAcks() {
	c.wmu.Lock()
	c.closeOpenLocked()
	c.out = wire.AppendFrame(c.out, wire.TPing, wire.FlagAckNow, nil)
	w := c.wakeLocked()
	c.wmu.Unlock()
	if w {
		c.signal()
	}
}

// readHandBack is how long reading may pause after a Recv that read for
// itself returned, before the background reader takes over again: long
// enough for a request-reply loop, or a consumer doing some work per
// message, to come back to Recv; short enough that frames nobody waits for
// (ACKs for a peer's retention, a hang-up) are still read soon. Goroutines
// that wait for this conn and cannot read it themselves do not wait for it
// (see waitingOn). It is not shorter because a timer that fires every
// couple of milliseconds keeps one of the runtime's threads in the
// netpoller with a timeout, which on its own made a raw Unix socket
// ping-pong 40% slower here (BENCHMARKS.md).
const readHandBack = 20 * time.Millisecond

// takeRead takes the read baton if it is free.
func (c *conn) takeRead(who int8) bool {
	c.rmu.Lock()
	ok := c.rholder == readFree
	if ok {
		c.rholder = who
	}
	c.rmu.Unlock()
	return ok
}

// releaseRead gives the baton back. The background reader is called at
// once if someone waits for this conn without being able to read it;
// otherwise after readHandBack, unless a Recv takes the baton first (a
// frame half read stays buffered for the next reader). handOff says the
// releasing Recv woke another Recv of its receiver to read on: Recv calls
// parked on c need not call the background reader then.
//
// A stream is read by its Recv too, not read ahead by the background
// reader in parallel: a Recv takes from the queue while it has messages
// and reads when it runs empty. Reading ahead on another goroutine cost a
// hand-off per burst and cache traffic per message between the two cores;
// one goroutine doing both moved 64-byte messages 20-35% faster with 30%
// less CPU per message (BENCHMARKS.md).
func (c *conn) releaseRead(who int8, handOff bool) {
	c.rmu.Lock()
	c.rholder = readFree
	now := who == readDirect && (c.slow.Load() > 0 || !handOff && c.parked.Load() > 0) || c.isClosed()
	st := c.stealer
	c.stealer = nil
	// The timer is set once per readHandBack at most, not per release:
	// resetting a timer can cost a wake-up of the netpoller's thread. A
	// release counts instead (no clock read: see handBack).
	c.relSeq++
	arm := !now && !c.rarmed
	if arm {
		c.rarmed, c.armSeq = true, c.relSeq
	}
	c.rmu.Unlock()
	if st != nil {
		st.wake()
	}
	if now {
		c.kickReader()
	} else if arm {
		c.rtimer.Reset(readHandBack)
	}
}

// handBack runs readHandBack after a Recv released the baton: if nobody
// took it and it was not released again since, the background reader
// takes it; if it was, handBack waits another period. So the background
// reader takes over between one and two periods after the last release.
func (c *conn) handBack() {
	c.rmu.Lock()
	c.rarmed = false
	if c.rholder != readFree {
		c.rmu.Unlock()
		return // the holder's release sets the timer again
	}
	if c.relSeq != c.armSeq {
		c.rarmed, c.armSeq = true, c.relSeq
		c.rmu.Unlock()
		c.rtimer.Reset(readHandBack)
		return
	}
	c.rmu.Unlock()
	c.handBacks.Add(1)
	c.kickReader()
}

func (c *conn) kickReader() {
	select {
	case c.rkick <- struct{}{}:
	default:
	}
}

// bgActive is how recently the background reader must have handled a
// frame for a Recv not to take the baton from it: while frames come in, it
// gives the baton up by itself after the next one that brings the Recv
// messages, without an interruption.
const bgActive = 100 * time.Microsecond

// askRead is called by a Recv that could read c itself but found the baton
// taken. If the background reader holds it, blocked in a read with nothing
// to deliver, it is interrupted and gives the baton up, and r is woken to
// take it. It reports false if the baton is free after all.
func (c *conn) askRead(r *Receiver) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	switch {
	case c.rholder == readFree:
		return false
	case c.rholder == readBG && c.stealer == nil:
		if monoNow()-c.bgLast.Load() < int64(bgActive) {
			return true // it is busy delivering: wait for it
		}
		c.stealer = r
		c.interruptRead()
	}
	return true
}

// interruptRead makes the read in progress, or the next one, end with
// os.ErrDeadlineExceeded. The count lets hbReader, which sets its own
// deadline before each read, see an interruption that came just before.
func (c *conn) interruptRead() {
	c.rintr.Add(1)
	c.nc.SetReadDeadline(time.Now())
}

// waitingOn registers a goroutine about to wait for something this conn
// brings (credit, an ACK, an answer, a message): if nobody is reading,
// the background reader starts now. parked is true for a Recv that reads
// for itself once woken. Each call is matched by doneWaiting.
func (c *conn) waitingOn(parked bool) {
	if parked {
		c.parked.Add(1)
	} else {
		c.slow.Add(1)
	}
	c.rmu.Lock()
	free := c.rholder == readFree
	c.rmu.Unlock()
	if free {
		c.kickReader()
	}
}

func (c *conn) doneWaiting(parked bool) {
	if parked {
		c.parked.Add(-1)
	} else {
		c.slow.Add(-1)
	}
}

// readLoop is the background reader: it reads whenever no Recv does.
func (c *conn) readLoop() {
	defer c.node.wg.Done()
	defer c.rtimer.Stop()
	for {
		select {
		case <-c.rkick:
		case <-c.closed:
			return
		}
		c.rmu.Lock()
		mine := c.rholder == readBG // the baton is handed over at start
		if c.rholder == readFree {
			c.rholder, mine = readBG, true
		}
		c.rmu.Unlock()
		if !mine {
			continue
		}
		if !c.readFrames(nil, nil) {
			return
		}
		c.releaseRead(readBG, false)
	}
}

// readFrames reads and handles frames; the caller holds the baton. For the
// background reader (r nil) it stops when a frame brought messages to a
// waiting Recv that can read for itself and nobody else needs the conn
// read: that Recv then reads on, without a hand-off per message or burst.
// For a Recv reading for itself (r and ctx set) it stops as soon as r has
// a message, is closed or interrupted, or ctx ends. It handles every whole
// frame already buffered before it stops, except after the frame that
// brought r its message: the rest wait for the next read (see below). It
// returns false once the conn is closed.
func (c *conn) readFrames(r *Receiver, ctx context.Context) bool {
	c.pollFor(r != nil)
	c.dr, c.drArmed, c.drGot = r, false, false
	c.yield = false // (said of the last frame this holder handled: none yet)
	defer func() { c.dr = nil }()
	for {
		// A frame that queued messages for r ends the read without
		// another look under r's lock (Recv takes one under it next).
		if r != nil && c.drGot {
			// The frames after it wait for the next read (this Recv's
			// next call, typically, while its peer works on the answer),
			// or for the background reader, called at once by releaseRead
			// when somebody waits for this conn: an ACK riding on an
			// answer was handled before the answer reached the
			// application, a tenth of a shared-memory round trip.
			return true
		}
		if r != nil && r.directDone(ctx) {
			return c.handleBuffered()
		}
		f, err := c.rd.Next()
		if err != nil {
			if c.direct && errors.Is(err, os.ErrDeadlineExceeded) && !c.isClosed() {
				// A Recv was interrupted (see Receiver.interruptLocked),
				// or asks the background reader for the baton (askRead);
				// a deadline meant for another holder is ignored.
				c.nc.SetReadDeadline(time.Time{})
				if r == nil {
					c.rmu.Lock()
					asked := c.stealer != nil
					c.rmu.Unlock()
					if asked {
						return c.handleBuffered()
					}
				}
				continue
			}
			c.readFailed(err)
			return false
		}
		c.yield = false
		if !c.handleOne(f) {
			return false
		}
		if r == nil {
			c.bgLast.Store(monoNow())
		}
		if c.yield && c.slow.Load() == 0 {
			// A Recv that can read for itself was woken for what this
			// frame brought: it reads on, and the baton is left to it.
			// A direct reader too: one whose channel is quiet would
			// otherwise keep the baton, and every message of a busy
			// channel beside it would cost a hand-off between goroutines
			// (a ping-pong over shared memory with such a Recv waiting
			// took 100 µs instead of 1.5; BENCHMARKS.md). A frame half
			// read stays buffered for the Recv that reads on.
			return c.handleBuffered()
		}
	}
}

// handleBuffered handles the whole frames already buffered.
func (c *conn) handleBuffered() bool {
	for c.rd.Ready() {
		f, err := c.rd.Next()
		if err != nil {
			c.readFailed(err)
			return false
		}
		if !c.handleOne(f) {
			return false
		}
	}
	return true
}

// handleOne handles a frame; on an error it closes the conn and reports
// false.
func (c *conn) handleOne(f wire.Frame) bool {
	if err := c.handle(f); err != nil {
		c.handleFailed(err)
		return false
	}
	return true
}

// readFailed closes the conn after a read error.
func (c *conn) readFailed(err error) {
	if err == io.EOF {
		err = fmt.Errorf("%w: %s hung up", ErrPeerGone, c.remoteID)
	}
	if errors.Is(err, wire.ErrChecksum) || errors.Is(err, wire.ErrTooLarge) || errors.Is(err, wire.ErrVersion) {
		c.node.log.Warn("closing connection after a bad frame", "peer", c.remoteID, "err", err)
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	c.close(err)
}

// handleFailed closes the conn after a frame it could not handle.
func (c *conn) handleFailed(err error) {
	if errors.Is(err, ErrPeerGone) {
		c.close(err) // the peer said goodbye
		return
	}
	c.node.log.Warn("closing connection after a protocol error", "peer", c.remoteID, "err", err)
	c.sendClose(err)
	c.close(err)
}

func (c *conn) sendClose(err error) {
	p := wire.AppendString(nil, err.Error())
	c.wmu.Lock()
	// The CLOSE alone: frames still queued are not sealed yet (the writer
	// seals them), and would reach the peer as a bad checksum instead of
	// the reason. The connection ends either way.
	out := wire.AppendFrame(nil, wire.TClose, 0, p)
	c.closeOpenLocked()
	c.out, c.unsealed, c.segs, c.segBytes = c.out[:0], c.unsealed[:0], nil, 0
	c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	c.nc.Write(out)
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

func (c *conn) handle(f wire.Frame) error {
	d := wire.NewDecoder(f.Payload)
	switch f.Type {
	case wire.TData:
		att := uint32(d.Uvarint())
		floor := d.Uvarint()
		if d.Err() != nil {
			return d.Err()
		}
		c.lmu.Lock()
		a := c.inAtts[att]
		c.lmu.Unlock()
		if a == nil {
			// The attachment was detached while data was in flight.
			return nil
		}
		if f.Flags&wire.FlagFiles != 0 {
			return a.r.deliverFiles(a, floor, d, c)
		}
		return a.r.deliver(a, floor, d, f.Flags&wire.FlagSeq != 0)
	case wire.TAck:
		att := uint32(d.Uvarint())
		taken := d.Uvarint()
		limit := d.Uvarint()
		if err := d.End(); err != nil {
			return err
		}
		c.lmu.Lock()
		l := c.links[att]
		c.lmu.Unlock()
		if l != nil {
			return l.s.ack(l, taken, limit)
		}
		return nil
	case wire.TAttach:
		return c.handleAttach(d)
	case wire.TAttached, wire.TAttachNo:
		att := uint32(d.Uvarint())
		var rep attachReply
		if f.Type == wire.TAttached {
			rep.props.Capacity = int(d.Uvarint())
			rep.props.OnFull = FullPolicy(d.Uvarint())
			rep.props.Delivery = Delivery(d.Uvarint())
			rep.props.MaxMessageSize = int(d.Uvarint())
			rep.limit = d.Uvarint()
		} else {
			rep.err = fmt.Errorf("%w: %s", ErrRefused, d.String(1024))
		}
		if err := d.End(); err != nil {
			return err
		}
		c.lmu.Lock()
		w := c.waits[att]
		delete(c.waits, att)
		c.lmu.Unlock()
		if w != nil {
			w <- rep
		}
		return nil
	case wire.TDetach:
		att := uint32(d.Uvarint())
		mine := d.Uvarint() // 1: the attachment the peer created (a link of the peer)
		if err := d.End(); err != nil {
			return err
		}
		var l *link
		var a *inAtt
		c.lmu.Lock()
		if mine == 1 {
			a = c.inAtts[att]
			delete(c.inAtts, att)
		} else {
			l = c.links[att]
			delete(c.links, att)
		}
		c.lmu.Unlock()
		if l != nil {
			l.s.linkDown(l, fmt.Errorf("%w: receiver on %s closed", ErrPeerGone, c.remoteID))
		}
		if a != nil {
			a.r.detach(a)
		}
		return nil
	case wire.TPool:
		return c.handlePool(d, f.Flags)
	case wire.TLoan:
		return c.handleLoan(d, f.Flags)
	case wire.TRelease:
		return c.handleRelease(d)
	case wire.TPing:
		if f.Flags&wire.FlagAckNow != 0 {
			c.ackNow.Store(monoNow() + int64(ackNowFor))
		}
		c.sendFrame(wire.TPong, nil) // after the ACKs owed
		return nil
	case wire.TPong:
		return nil
	case wire.TClose:
		return fmt.Errorf("%w: peer closed the connection: %s", ErrPeerGone, d.String(4096))
	default:
		return protoErr("unexpected %s frame", f.Type)
	}
}

func (c *conn) handleAttach(d *wire.Decoder) error {
	att := uint32(d.Uvarint())
	kind := d.String(16)
	name := d.String(1024)
	stream := d.Uvarint()
	if err := d.End(); err != nil {
		return err
	}
	r := c.node.findReceiver(kind, name)
	if r == nil {
		p := binary.AppendUvarint(nil, uint64(att))
		p = wire.AppendString(p, fmt.Sprintf("no %s named %q on node %s", kind, name, c.node.id))
		c.sendFrame(wire.TAttachNo, p)
		return nil
	}
	a := &inAtt{c: c, id: att, r: r, stream: stream, remote: c.remoteID}
	c.lmu.Lock()
	if _, dup := c.inAtts[att]; dup {
		c.lmu.Unlock()
		return protoErr("attachment %d attached twice", att)
	}
	if len(c.inAtts) >= maxAttachments {
		c.lmu.Unlock()
		return protoErr("more than %d attachments on one connection", maxAttachments)
	}
	c.inAtts[att] = a
	c.lmu.Unlock()
	limit, ok := r.attach(a)
	if !ok {
		c.lmu.Lock()
		delete(c.inAtts, att)
		c.lmu.Unlock()
		p := binary.AppendUvarint(nil, uint64(att))
		p = wire.AppendString(p, fmt.Sprintf("%s %q on node %s is closing", kind, name, c.node.id))
		c.sendFrame(wire.TAttachNo, p)
		return nil
	}
	o := r.opts
	p := binary.AppendUvarint(nil, uint64(att))
	p = binary.AppendUvarint(p, uint64(o.Capacity))
	p = binary.AppendUvarint(p, uint64(o.OnFull))
	p = binary.AppendUvarint(p, uint64(o.Delivery))
	p = binary.AppendUvarint(p, uint64(o.MaxMessageSize))
	p = binary.AppendUvarint(p, limit)
	c.sendFrame(wire.TAttached, p)
	return nil
}

// attach asks the peer to attach l to an endpoint and waits for the answer.
func (c *conn) attach(ctx context.Context, l *link, kind, name string, stream uint64) (attachReply, error) {
	w := make(chan attachReply, 1)
	c.lmu.Lock()
	if c.isClosed() {
		c.lmu.Unlock()
		return attachReply{}, fmt.Errorf("%w: connection to %s closed", ErrPeerGone, c.remoteID)
	}
	c.nextAtt++
	l.id = c.nextAtt
	c.waits[l.id] = w
	c.links[l.id] = l
	c.lmu.Unlock()
	p := binary.AppendUvarint(nil, uint64(l.id))
	p = wire.AppendString(p, kind)
	p = wire.AppendString(p, name)
	p = binary.AppendUvarint(p, stream)
	c.sendFrame(wire.TAttach, p)
	c.waitingOn(false)
	defer c.doneWaiting(false)
	select {
	case rep := <-w:
		if rep.err != nil {
			c.lmu.Lock()
			delete(c.links, l.id)
			c.lmu.Unlock()
		}
		return rep, rep.err
	case <-ctx.Done():
		c.lmu.Lock()
		delete(c.waits, l.id)
		delete(c.links, l.id)
		c.lmu.Unlock()
		c.detachLink(l.id)
		return attachReply{}, ctx.Err()
	}
}

// detachLink ends an attachment this side created (a sender's link).
func (c *conn) detachLink(id uint32) { c.detach(id, true) }

// detachIn ends an attachment the peer created (a receiver lets go).
func (c *conn) detachIn(id uint32) { c.detach(id, false) }

func (c *conn) detach(id uint32, mine bool) {
	c.lmu.Lock()
	var dir uint64
	if mine {
		delete(c.links, id)
		dir = 1
	} else {
		delete(c.inAtts, id)
	}
	c.lmu.Unlock()
	if !c.isClosed() {
		p := binary.AppendUvarint(nil, uint64(id))
		p = binary.AppendUvarint(p, dir)
		c.sendFrame(wire.TDetach, p)
	}
}
