package shmconn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout constants; LAYOUT.md explains them.
const (
	Magic       = 0x31524d53_54464f4c // "LOFTSMR1" little-endian
	Version     = 1
	HeaderSize  = 4096
	DefaultRing = 1 << 20
	MinRing     = 4096
	MaxRing     = 1 << 30

	offMagic    = 0
	offVersion  = 8
	offRingSize = 12
	offRingA    = 256 // control block of ring A: dialler -> listener
	offRingB    = 512 // control block of ring B: listener -> dialler
	ctlTail     = 0
	ctlHead     = 64
	ctlConsPark = 128
	ctlProdPark = 192
	ctlProdWant = 200
)

// Wake-up bytes on the side socket.
const (
	wakeData  = 'D' // (eventfd) the ring you consume has data
	wakeSpace = 'S' // (eventfd) the ring you produce has room
	wakeFiles = 'F' // files follow in this message's ancillary data
	helloAck  = 'A'
)

// maxPendingFiles bounds the files a peer may pass before they are taken.
const maxPendingFiles = 256

// Errors a caller can match with errors.Is.
var (
	ErrCorrupt = errors.New("shmconn: shared ring corrupted by the peer")
	ErrHello   = errors.New("shmconn: bad handshake")
)

// Config tunes a connection. The zero value is the default.
type Config struct {
	// RingSize is the size of each direction's ring in bytes, a power of
	// two between 4 KiB and 1 GiB. Zero: 1 MiB. Set by the dialler.
	RingSize int
	// Spin is how long a side polls the ring before it parks. Zero: 20 µs.
	Spin time.Duration
	// BusyPoll makes a reader poll until data comes or its deadline
	// passes, never parking: the lowest latency, at the cost of a core per
	// waiting side. A writer waiting for room in a full ring parks anyway
	// (see Write).
	BusyPoll bool
}

// SetReadPoll turns busy-polling on or off for reads, from the next wait
// for data on; writes keep Config.BusyPoll. A connection read in turn by
// a goroutine that wants the lowest latency and by one that merely keeps
// it drained (loft's background reader) polls only for the first: a
// poller that serves nobody would take a core from one that does.
func (c *Conn) SetReadPoll(on bool) { c.rpoll.Store(on) }

// SetReadWaitHook sets f to be called, on the reading goroutine, by a Read
// that has waited a while for data: just before it parks, or after a few
// microseconds of busy-polling; at most once per wait. A caller whose
// reads are usually served at once can defer costly preparations for a
// long wait (loft arms the cancellation of a context only then). Call it
// before the first Read; f must not call back into c's Read.
func (c *Conn) SetReadWaitHook(f func()) { c.waitHook = f }

// minSpin is the shortest adaptive spin before parking.
const minSpin = 500 * time.Nanosecond

// maxSpin bounds the adaptive spin: a side whose parked waits end within
// maxSpin (woken for data) spins about as long as they lasted next time.
const maxSpin = 80 * time.Microsecond

func (c *Config) spin() time.Duration {
	if c == nil || c.Spin == 0 {
		return 20 * time.Microsecond
	}
	return c.Spin
}

type ring struct {
	tail, head         *atomic.Uint64
	consPark, prodPark *atomic.Uint32
	prodWant           *atomic.Uint64 // the head a parked producer waits for
	data               []byte
	size               uint64
}

func newRing(mem []byte, ctl int, data []byte) ring {
	p := unsafe.Pointer(&mem[ctl])
	return ring{
		tail:     (*atomic.Uint64)(unsafe.Add(p, ctlTail)),
		head:     (*atomic.Uint64)(unsafe.Add(p, ctlHead)),
		consPark: (*atomic.Uint32)(unsafe.Add(p, ctlConsPark)),
		prodPark: (*atomic.Uint32)(unsafe.Add(p, ctlProdPark)),
		prodWant: (*atomic.Uint64)(unsafe.Add(p, ctlProdWant)),
		data:     data,
		size:     uint64(len(data)),
	}
}

// Conn is a net.Conn over shared memory. It is safe for concurrent use:
// Reads are serialised with Reads and Writes with Writes; Close unblocks
// both.
type Conn struct {
	sock   *net.UnixConn
	mem    []byte
	tx, rx ring
	spin   time.Duration
	poll   bool        // Config.BusyPoll: reads busy-poll at first (see SetReadPoll)
	rpoll  atomic.Bool // reads waiting for data busy-poll (see SetReadPoll)
	// spaceWakes counts the wake-ups of the peer's writer parked for room
	// (tests).
	spaceWakes atomic.Int64
	// waitHook is called by a read that waited a while (see SetReadWaitHook).
	waitHook func()

	// Wake-ups travel through eventfds: evData and evSpace are ours, read
	// through the Go netpoller while parked (no thread held); the peer
	// writes them. peerData and peerSpace are the peer's, which we write.
	evData, evSpace     *os.File
	erData, erSpace     *evReader // evData's and evSpace's
	peerData, peerSpace int
	closed              chan struct{}
	gone                chan struct{} // the peer's socket closed
	// isClosed and isGone, set before the channels close: Read, Write and
	// the spin loops ask on every call, and an atomic load costs a tenth
	// of a non-blocking receive from a channel.
	closedF, goneF atomic.Bool
	once           sync.Once
	goneErr        error

	rxSpin, txSpin atomic.Int64 // adaptive spin budgets, ns
	// wokePeer: a Write since the last Read's wait woke the parked peer.
	wokePeer         atomic.Bool
	yields           atomic.Int64 // CPU yields in Read's spins (for tests)
	rxFails, txFails atomic.Int32 // parks since the last spin that paid off
	rmu, wmu         sync.Mutex
	// txHead is the peer's head of tx as last loaded (guarded by wmu): a
	// write loads head again only when this one leaves too little room,
	// instead of moving its cache line over from the peer, which stores it
	// on every read, once per message.
	txHead uint64
	// txTail and rxHead are this side's own indexes of its rings (tx's
	// tail, guarded by wmu; rx's head, guarded by rmu): only this side
	// stores them, so it keeps a private copy instead of loading the
	// shared word, whose cache line the peer, spinning on it, has pulled
	// to its CPU (a load of it cost 0.37 µs per write on a 2-CPU virtual
	// machine, a sixth of a remote call).
	txTail, rxHead uint64
	rdl, wdl       deadline
	fmu            sync.Mutex
	files          []int
	filesCh        chan struct{}
	local, remot   net.Addr
}

func newConn(sock *net.UnixConn, mem []byte, dialer bool, cfg *Config, ev eventfds) *Conn {
	size := int(binary.LittleEndian.Uint32(mem[offRingSize:]))
	a := newRing(mem, offRingA, mem[HeaderSize:HeaderSize+size])
	b := newRing(mem, offRingB, mem[HeaderSize+size:HeaderSize+2*size])
	c := &Conn{
		sock:      sock,
		mem:       mem,
		spin:      cfg.spin(),
		poll:      cfg != nil && cfg.BusyPoll,
		evData:    os.NewFile(uintptr(ev.ownData), "shmconn-data"),
		evSpace:   os.NewFile(uintptr(ev.ownSpace), "shmconn-space"),
		peerData:  ev.peerData,
		peerSpace: ev.peerSpace,
		closed:    make(chan struct{}),
		gone:      make(chan struct{}),
		filesCh:   make(chan struct{}, 1),
		rdl:       makeDeadline(),
		wdl:       makeDeadline(),
		local:     sock.LocalAddr(),
		remot:     sock.RemoteAddr(),
	}
	c.erData, c.erSpace = newEvReader(c.evData), newEvReader(c.evSpace)
	c.rpoll.Store(c.poll)
	if dialer {
		c.tx, c.rx = a, b
	} else {
		c.tx, c.rx = b, a
	}
	c.txTail, c.rxHead = c.tx.tail.Load(), c.rx.head.Load()
	go c.sockLoop()
	return c
}

// sockLoop reads wake-ups and files from the side socket until it closes.
func (c *Conn) sockLoop() {
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*64))
	for {
		n, oobn, _, _, err := c.sock.ReadMsgUnix(buf, oob)
		n, oobn = max(n, 0), max(oobn, 0)
		if oobn > 0 {
			if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
				for _, m := range msgs {
					if fds, ferr := unix.ParseUnixRights(&m); ferr == nil {
						c.fmu.Lock()
						c.files = append(c.files, fds...)
						over := len(c.files) > maxPendingFiles
						c.fmu.Unlock()
						if over {
							err = fmt.Errorf("%w: %d passed files not taken", ErrCorrupt, maxPendingFiles)
						}
						notify(c.filesCh)
					}
				}
			}
		}
		for _, b := range buf[:n] {
			switch b {
			case wakeFiles:
			default:
				err = fmt.Errorf("%w: unknown wake-up byte %#x", ErrCorrupt, b)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
				err = nil
			}
			c.goneErr = err
			c.goneF.Store(true)
			close(c.gone)
			// Unpark whoever waits: the rings will not move again.
			c.evData.SetReadDeadline(time.Now())
			c.evSpace.SetReadDeadline(time.Now())
			return
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

var one = [8]byte{1}

// wake tells the peer that the ring it waits on moved.
func (c *Conn) wake(b byte) {
	fd := c.peerData
	if b == wakeSpace {
		fd = c.peerSpace
	}
	// A raw system call: an eventfd write never blocks. (See evReader.)
	unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&one[0])), 8)
}

// evReader consumes an eventfd's count, parking in the Go netpoller while
// it is zero (honouring the file's read deadline, and ended by its Close).
// One per direction, made once: a closure per wait cost three allocations.
// Its user holds the direction's lock (rmu or wmu).
//
// The read is a raw system call, as is wake's write: the runtime's entry
// for a blocking call wakes its monitor thread (sysmon) when that thread
// sleeps after an idle spell, and one more thread asking for a CPU, on a
// host where both sides of a busy connection spin, takes it from one of
// them: rmi calls back to back over shared memory had a mean of 10-11.5
// us against a median of 2.5 us. Both calls must be raw for the gain
// (BENCHMARKS.md).
type evReader struct {
	rc    syscall.RawConn
	fn    func(fd uintptr) bool // e.read
	buf   [8]byte
	errno syscall.Errno
}

func newEvReader(f *os.File) *evReader {
	e := &evReader{}
	e.rc, _ = f.SyscallConn() // (it cannot fail for an *os.File from NewFile)
	e.fn = e.read
	return e
}

func (e *evReader) read(fd uintptr) bool {
	_, _, e.errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&e.buf[0])), 8)
	return e.errno != unix.EAGAIN
}

func (e *evReader) wait() error {
	e.errno = 0
	err := e.rc.Read(e.fn)
	if err == nil && e.errno != 0 {
		err = e.errno
	}
	return err
}

func (c *Conn) isGone() bool { return c.goneF.Load() }

func (c *Conn) isClosed() bool { return c.closedF.Load() }

// Read reads from the ring the peer writes. After the peer is gone, Read
// returns what is left in the ring, then io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	if c.rdl.expired() {
		return 0, os.ErrDeadlineExceeded
	}
	if len(p) == 0 {
		return 0, nil
	}
	r := &c.rx
	head := c.rxHead
	for {
		tail := r.tail.Load()
		if tail != head {
			avail := tail - head
			if avail > r.size {
				return 0, fmt.Errorf("%w: %d bytes claimed in a ring of %d", ErrCorrupt, avail, r.size)
			}
			n := min(avail, uint64(len(p)))
			off := head % r.size
			k := copy(p[:n], r.data[off:])
			if uint64(k) < n {
				copy(p[k:n], r.data[:n-uint64(k)])
			}
			// Publish, then look at the peer's parked word: a store then a
			// load, which needs a full fence (see publish).
			publish(r.head, head+n)
			c.rxHead = head + n
			// A parked producer waits for a quarter of the ring, not for
			// the first byte (see Write): wake it only once that is free.
			if r.prodPark.Load() != 0 && head+n >= r.prodWant.Load() && r.prodPark.CompareAndSwap(1, 0) {
				c.spaceWakes.Add(1)
				c.wake(wakeSpace)
			}
			return int(n), nil
		}
		if c.isGone() {
			// The peer stored its last tail before its socket closed, so a
			// tail loaded now, after gone, is final; the one above may be
			// older and miss bytes written just before the peer closed.
			if r.tail.Load() != head {
				continue
			}
			if c.goneErr != nil {
				return 0, c.goneErr
			}
			return 0, io.EOF
		}
		if err := c.wait(r, head+1, true); err != nil {
			return 0, err
		}
	}
}

// wait waits until the word the caller waits on reaches want: for a
// reader, until tail does (want is one past the tail it saw); for a writer,
// until head does (the head that leaves the room it waits for).
func (c *Conn) wait(r *ring, want uint64, reader bool) error {
	// peer is the other side's parked word on this same ring (see wait's
	// safety net).
	word, park, peer, ev, er, dl := r.tail, r.consPark, r.prodPark, c.evData, c.erData, &c.rdl
	if !reader {
		word, park, peer, ev, er, dl = r.head, r.prodPark, r.consPark, c.evSpace, c.erSpace, &c.wdl
	}
	if dl.expired() {
		return os.ErrDeadlineExceeded
	}
	spin := &c.rxSpin
	if !reader {
		spin = &c.txSpin
	}
	budget := time.Duration(spin.Load())
	if budget == 0 {
		budget = c.spin
	}
	// yield: what we wait for comes from a peer that our last write had
	// to wake. It answers no sooner than a wake-up, tens of microseconds,
	// and the kernel may run it on this very CPU, which our spin would
	// keep from it until the spin ends: at 1000 round trips a second,
	// ping-pong took 1.1-1.8x a raw Unix socket's round trip with a plain
	// spin, 0.5-0.9x with one that yields the CPU every few dozen looks
	// at the ring (BENCHMARKS.md). Spinning as usual otherwise: a yield
	// is a system call.
	yield := false
	if reader && c.wokePeer.Load() {
		c.wokePeer.Store(false)
		yield = true
	}
	var start time.Time
	// A writer waiting for room does not busy-poll: it waits for a
	// quarter of the ring to drain (see Write), which is throughput, not
	// latency, and a poller would take a core from the reader draining it.
	poll := false
	if reader {
		poll = c.rpoll.Load()
	}
	if !poll {
		start = time.Now() // busy-polling has no time budget: no clock read
	}
	for i := 0; ; i++ {
		if word.Load() >= want {
			// The spin paid off: spin at least the full time next time
			// (a budget grown by wait times, below, stays). Stores only
			// when something changes: each is a locked instruction.
			if spin.Load() < int64(c.spin) {
				spin.Store(int64(c.spin))
			}
			fails := &c.rxFails
			if !reader {
				fails = &c.txFails
			}
			if fails.Load() != 0 {
				fails.Store(0)
			}
			return nil
		}
		// The checks below cost as much as dozens of loads of the word;
		// busy-polling, which has no time budget, does them rarely so that
		// a change of the word is seen sooner.
		if i&63 == 63 && (!poll || i&1023 == 1023) {
			if c.isClosed() {
				return net.ErrClosed
			}
			if c.isGone() {
				return nil
			}
			if poll {
				if dl.expired() {
					return os.ErrDeadlineExceeded
				}
				if i&4095 == 4095 {
					if reader && i == 4095 && c.waitHook != nil {
						c.waitHook()
					}
					runtime.Gosched()
				}
				continue
			}
			if time.Since(start) > budget {
				break
			}
			if yield {
				unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
				c.yields.Add(1)
			}
		}
	}
	// The spin did not pay off. After a few such misses in a row, spin half
	// as long, down to a floor, so an idle direction costs almost nothing.
	fails := &c.rxFails
	if !reader {
		fails = &c.txFails
	}
	if fails.Add(1) >= 4 {
		fails.Store(0)
		spin.Store(max(int64(budget/2), int64(minSpin)))
	}
	if reader && c.waitHook != nil {
		c.waitHook()
	}
	// Announce the sleep, then look at the ring again: a store then a load,
	// mirroring the peer's publish then load of this word. park.Swap is a
	// full fence in every build (see publish); LAYOUT.md has the argument
	// that one of the two sides always sees the other's store.
	if !reader {
		r.prodWant.Store(want) // before park: the reader loads it after park
	}
	park.Swap(1)
	if word.Load() >= want || c.isGone() {
		park.Store(0)
		return nil
	}
	// From here on only a successful compare-and-swap of park from 1 to 0
	// by the peer, always followed by its eventfd write, or our own bound
	// below ends the sleep. A count left by a wake-up that raced with an
	// earlier recheck only makes a later sleep return early: the caller
	// looks at the ring again and waits again, so that is harmless.
	bound := sleepFirst
	var suspect bool // the ring moved with no wake-up at the last bound
	var moved uint64 // the word then
	for {
		// The sleep is bounded: a safety net, not part of the protocol
		// (LAYOUT.md, "Safety net"). The user's deadline still applies.
		at, hasDL := dl.at()
		limit := time.Now().Add(bound)
		if hasDL && at.Before(limit) {
			limit = at
		}
		ev.SetReadDeadline(limit)
		// SetReadDeadline (the user's) and sockLoop (the peer gone) record
		// why before they set ev's deadline, which ours may just have
		// replaced: look again now that ours is set. One that comes later
		// replaces ours, and Read returns at once.
		if at2, ok := dl.at(); ok != hasDL || !at2.Equal(at) {
			continue
		}
		if c.isGone() {
			park.Store(0)
			return nil
		}
		err := er.wait()
		expired := errors.Is(err, os.ErrDeadlineExceeded)
		if expired && !c.isGone() && !c.isClosed() && !dl.expired() && !(hasDL && !time.Now().Before(at)) {
			// The bound passed, not the user's deadline.
			now := word.Load()
			if now < want {
				bound = min(2*bound, sleepMax)
				continue
			}
			// The ring moved and no wake-up came. If park is 0, the peer
			// claimed the wake-up and its eventfd write is on its way or
			// lost the race with our timer (a thread the kernel did not
			// run for a while delivers both at once). If park is still 1,
			// the peer may have missed it, or may not have looked at park
			// yet (it was stopped between its publish and that look).
			// Count it as lost only when the second is ruled out: the peer
			// sleeps on this ring, or it published again, so it looked at
			// park and could not have missed the 1 under the protocol.
			// Otherwise wait one more bound, keeping park set, first.
			if park.Load() != 0 && !suspect && peer.Load() == 0 {
				suspect, moved = true, now
				continue
			}
			if park.CompareAndSwap(1, 0) && (peer.Load() != 0 || word.Load() != moved) {
				lostWakeups.Add(1)
			}
			return nil
		}
		park.Store(0)
		switch {
		case err == nil:
			// Woken for data. If it came within a full spin of the start
			// of the wait, spinning would have paid: spin the full time
			// again. (Without this, a side whose waits are a little
			// longer than a shrunken budget, a server between requests
			// say, stays at the floor and pays a wake-up each time.)
			if !poll {
				if w := time.Since(start); w < maxSpin {
					spin.Store(int64(min(maxSpin, max(c.spin, w+w/4))))
					fails.Store(0)
				}
			}
			return nil
		case c.isGone():
			return nil
		case c.isClosed():
			return net.ErrClosed
		case expired:
			return os.ErrDeadlineExceeded
		}
		return err
	}
}

// The safety-net bound on a parked sleep: 10 ms, doubling to 250 ms.
const (
	sleepFirst = 10 * time.Millisecond
	sleepMax   = 250 * time.Millisecond
)

// publish stores a ring index (tail or head) that the peer waits on. The
// caller then loads the peer's parked word, and that store-then-load needs
// a full fence. Go's atomic Store is sequentially consistent, but under the
// race detector a Store to memory outside the Go heap, such as this
// mapping, is a plain MOV on amd64 (the race runtime skips its own
// bookkeeping and uses a release store): the load can then pass the store
// in the store buffer, both sides miss each other and both sleep for good.
// Swap is an XCHG (a full fence) in every build, and compiles to the same
// instruction as Store without -race on amd64.
func publish(word *atomic.Uint64, v uint64) { word.Swap(v) }

var lostWakeups atomic.Int64

// LostWakeups reports how many times a parked side, when its bounded sleep
// ran out, found a wake-up that the peer should have sent and did not: the
// ring had moved, its parked word was still set, and the peer had since
// parked on the same ring or published again. It stays zero unless a peer
// breaks the protocol in LAYOUT.md.
func LostWakeups() int64 { return lostWakeups.Load() }

// Write writes p into the ring the peer reads, waiting for room as needed.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	if c.wdl.expired() {
		return 0, os.ErrDeadlineExceeded
	}
	r := &c.tx
	tail := c.txTail
	total := 0
	for len(p) > 0 {
		if c.isGone() {
			return total, &net.OpError{Op: "write", Net: "shm", Err: syscall.EPIPE}
		}
		free, err := c.roomLocked(r, tail, len(p))
		if err != nil {
			return total, err
		}
		if free == 0 {
			// Full: wait for a quarter of the ring, not for the first
			// bytes read. The reader is behind, so what is written now
			// waits behind three quarters of a ring anyway; and a writer
			// woken, or spinning, for every few bytes freed took the core
			// the reader needed (a 2-core machine runs the sender, its
			// writer and the reader) and made the reader wake it per read.
			if err := c.wait(r, tail-r.size+r.size/4, false); err != nil {
				return total, err
			}
			continue
		}
		n := min(free, uint64(len(p)))
		tail = c.putLocked(r, tail, p[:n])
		p = p[n:]
		total += int(n)
	}
	return total, nil
}

// roomLocked returns the free bytes of ring r after tail, from the head
// last loaded if that leaves room for want bytes, else from the head
// loaded now (see txHead). Caller holds wmu.
func (c *Conn) roomLocked(r *ring, tail uint64, want int) (uint64, error) {
	head := c.txHead
	if r.size-(tail-head) < uint64(want) {
		head = r.head.Load()
		c.txHead = head
	}
	used := tail - head
	if used > r.size {
		return 0, fmt.Errorf("%w: peer's head is %d bytes behind a ring of %d", ErrCorrupt, used, r.size)
	}
	return r.size - used, nil
}

// putLocked copies p into ring r at tail (the caller checked the room),
// publishes the new tail and wakes the reader if it parked. Caller holds
// wmu.
func (c *Conn) putLocked(r *ring, tail uint64, p []byte) uint64 {
	off := tail % r.size
	if k := copy(r.data[off:], p); k < len(p) {
		copy(r.data, p[k:])
	}
	tail += uint64(len(p))
	publish(r.tail, tail) // then load the parked word: see publish
	c.txTail = tail
	if r.consPark.Load() != 0 && r.consPark.CompareAndSwap(1, 0) {
		c.wake(wakeData)
		if !c.wokePeer.Load() {
			c.wokePeer.Store(true)
		}
	}
	return tail
}

// TryWrite writes as much of p as the ring has room for now, without
// waiting, and returns how much that was (0 when the ring is full). It
// takes the same lock as Write, and wakes a parked reader the same way.
func (c *Conn) TryWrite(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	if c.isGone() {
		return 0, &net.OpError{Op: "write", Net: "shm", Err: syscall.EPIPE}
	}
	r := &c.tx
	tail := c.txTail
	free, err := c.roomLocked(r, tail, len(p))
	if err != nil {
		return 0, err
	}
	n := min(free, uint64(len(p)))
	if n > 0 {
		c.putLocked(r, tail, p[:n])
	}
	return int(n), nil
}

// WriteFiles passes open files to the peer ahead of the bytes written next;
// the peer collects them with TakeFiles. The caller keeps its descriptors.
func (c *Conn) WriteFiles(fds []int) error {
	_, _, err := c.sock.WriteMsgUnix([]byte{wakeFiles}, unix.UnixRights(fds...), nil)
	return err
}

// TakeFiles returns the next n files the peer passed, waiting up to timeout
// for them to arrive. The caller owns the descriptors.
func (c *Conn) TakeFiles(n int, timeout time.Duration) ([]int, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		c.fmu.Lock()
		if len(c.files) >= n {
			fds := append([]int(nil), c.files[:n]...)
			c.files = c.files[n:]
			c.fmu.Unlock()
			return fds, nil
		}
		c.fmu.Unlock()
		select {
		case <-c.filesCh:
		case <-c.gone:
			return nil, io.ErrUnexpectedEOF
		case <-c.closed:
			return nil, net.ErrClosed
		case <-t.C:
			return nil, fmt.Errorf("shmconn: %d files announced, not received within %v", n, timeout)
		}
	}
}

// Close closes the connection; pending Reads and Writes return. The shared
// memory is unmapped once they have.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.closedF.Store(true)
		close(c.closed)
		c.sock.Close()
		c.rdl.set(time.Time{})
		c.wdl.set(time.Time{})
		c.evData.Close() // unblocks a parked Read or Write
		c.evSpace.Close()
		c.rmu.Lock()
		c.wmu.Lock()
		unix.Munmap(c.mem)
		c.mem = nil
		c.wmu.Unlock()
		c.rmu.Unlock()
		c.fmu.Lock()
		for _, fd := range c.files {
			unix.Close(fd)
		}
		c.files = nil
		c.fmu.Unlock()
		unix.Close(c.peerData)
		unix.Close(c.peerSpace)
	})
	return nil
}

// LocalAddr returns the side socket's local address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the side socket's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.remot }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	if !c.isGone() {
		c.evData.SetReadDeadline(t)
	}
	return nil
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	if !c.isGone() {
		c.evSpace.SetReadDeadline(t)
	}
	return nil
}

// PeerCred returns the credentials of the peer process (SO_PEERCRED).
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	raw, err := c.sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// ---- deadlines ----

type deadline struct {
	mu     *sync.Mutex
	timer  **time.Timer
	cancel *chan struct{}
	when   *time.Time
	// fired is whether cancel is closed, set before it closes and cleared
	// when it is replaced: expired, asked by every Read and Write, loads
	// it instead of taking mu and receiving from the channel.
	fired *atomic.Bool
}

func makeDeadline() deadline {
	ch := make(chan struct{})
	var t *time.Timer
	var at time.Time
	return deadline{mu: &sync.Mutex{}, timer: &t, cancel: &ch, when: &at, fired: new(atomic.Bool)}
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if *d.timer != nil && !(*d.timer).Stop() {
		<-*d.cancel // the timer fired: wait until it closed the channel
	}
	*d.timer = nil
	closed := d.fired.Load() // (the channel is closed exactly when fired is set, once a fired timer has closed it)
	*d.when = t
	if t.IsZero() {
		if closed {
			d.fired.Store(false)
			*d.cancel = make(chan struct{})
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		if !closed {
			d.fired.Store(true)
			close(*d.cancel)
		}
		return
	}
	if closed {
		d.fired.Store(false)
		*d.cancel = make(chan struct{})
	}
	ch, fired := *d.cancel, d.fired
	// (fired is set before the close: set, which waits for the close of a
	// timer it could not stop, then sees it set.)
	*d.timer = time.AfterFunc(dur, func() { fired.Store(true); close(ch) })
}

// at returns the deadline, if one is set.
func (d *deadline) at() (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.when, !d.when.IsZero()
}

func (d *deadline) expired() bool { return d.fired.Load() }

// ---- dial and listen ----

// eventfds are a connection's wake-up descriptors (see Conn).
type eventfds struct {
	ownData, ownSpace, peerData, peerSpace int
}

// newEventfds makes this side's two eventfds, non-blocking so that the Go
// netpoller waits on them.
func newEventfds() (data, space int, err error) {
	data, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return -1, -1, os.NewSyscallError("eventfd", err)
	}
	space, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(data)
		return -1, -1, os.NewSyscallError("eventfd", err)
	}
	return data, space, nil
}

// recvFDs reads one message with its passed descriptors.
func recvFDs(uc *net.UnixConn, buf []byte, maxFDs int) (int, []int, error) {
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return 0, nil, err
	}
	var fds []int
	if msgs, perr := unix.ParseSocketControlMessage(oob[:max(oobn, 0)]); perr == nil {
		for _, m := range msgs {
			if f, ferr := unix.ParseUnixRights(&m); ferr == nil {
				fds = append(fds, f...)
			}
		}
	}
	return n, fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Dial connects to the shared-memory listener at the Unix socket path.
func Dial(ctx context.Context, path string, cfg *Config) (*Conn, error) {
	size := DefaultRing
	if cfg != nil && cfg.RingSize != 0 {
		size = cfg.RingSize
	}
	if size < MinRing || size > MaxRing || size&(size-1) != 0 {
		return nil, fmt.Errorf("shmconn: ring size %d: want a power of two from %d to %d", size, MinRing, MaxRing)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	sock := nc.(*net.UnixConn)
	mem, fd, err := createMem(size)
	if err != nil {
		sock.Close()
		return nil, err
	}
	defer unix.Close(fd)
	fail := func(err error) (*Conn, error) {
		unix.Munmap(mem)
		sock.Close()
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		sock.SetDeadline(dl)
	} else {
		sock.SetDeadline(time.Now().Add(10 * time.Second))
	}
	evd, evs, err := newEventfds()
	if err != nil {
		return fail(err)
	}
	hello := binary.LittleEndian.AppendUint64(nil, Magic)
	if _, _, err := sock.WriteMsgUnix(hello, unix.UnixRights(fd, evd, evs), nil); err != nil {
		closeAll([]int{evd, evs})
		return fail(err)
	}
	var ack [1]byte
	n, peer, err := recvFDs(sock, ack[:], 2)
	if err != nil || n != 1 || ack[0] != helloAck || len(peer) != 2 {
		closeAll(append(peer, evd, evs))
		return fail(fmt.Errorf("%w: listener did not accept the shared memory: %v", ErrHello, err))
	}
	sock.SetDeadline(time.Time{})
	return newConn(sock, mem, true, cfg, eventfds{ownData: evd, ownSpace: evs, peerData: peer[0], peerSpace: peer[1]}), nil
}

func createMem(ringSize int) ([]byte, int, error) {
	total := HeaderSize + 2*ringSize
	fd, err := unix.MemfdCreate("loft-shmconn", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, -1, os.NewSyscallError("memfd_create", err)
	}
	if err := unix.Ftruncate(fd, int64(total)); err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("fcntl(F_ADD_SEALS)", err)
	}
	mem, err := unix.Mmap(fd, 0, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("mmap", err)
	}
	binary.LittleEndian.PutUint64(mem[offMagic:], Magic)
	binary.LittleEndian.PutUint32(mem[offVersion:], Version)
	binary.LittleEndian.PutUint32(mem[offRingSize:], uint32(ringSize))
	return mem, fd, nil
}

// Listener accepts shared-memory connections on a Unix socket.
type Listener struct {
	ln    *net.UnixListener
	cfg   *Config
	Check func(*net.UnixConn) error // optional: vet the peer before the handshake
}

// Listen listens on the Unix socket path (created with mode 0600).
func Listen(ctx context.Context, path string, cfg *Config) (*Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return &Listener{ln: l.(*net.UnixListener), cfg: cfg}, nil
}

// Accept waits for a peer and completes the handshake. A peer that fails
// the check or the handshake is dropped and Accept goes on waiting.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		uc, err := l.ln.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if l.Check != nil {
			if err := l.Check(uc); err != nil {
				uc.Close()
				continue
			}
		}
		c, err := accept(uc, l.cfg)
		if err != nil {
			uc.Close()
			continue
		}
		return c, nil
	}
}

// accept validates the peer's memfd: sealed, of the size its header says,
// with our magic and version, before mapping it.
func accept(uc *net.UnixConn, cfg *Config) (*Conn, error) {
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	n, fds, err := recvFDs(uc, buf, 4)
	if err != nil {
		return nil, err
	}
	if n != 8 || binary.LittleEndian.Uint64(buf) != Magic || len(fds) != 3 {
		closeAll(fds)
		return nil, fmt.Errorf("%w: want magic, a memfd and two eventfds", ErrHello)
	}
	mem, err := mapPeer(fds[0])
	unix.Close(fds[0])
	if err != nil {
		closeAll(fds[1:])
		return nil, err
	}
	evd, evs, err := newEventfds()
	if err != nil {
		unix.Munmap(mem)
		closeAll(fds[1:])
		return nil, err
	}
	if _, _, err := uc.WriteMsgUnix([]byte{helloAck}, unix.UnixRights(evd, evs), nil); err != nil {
		unix.Munmap(mem)
		closeAll(append(fds[1:], evd, evs))
		return nil, err
	}
	uc.SetDeadline(time.Time{})
	return newConn(uc, mem, false, cfg, eventfds{ownData: evd, ownSpace: evs, peerData: fds[1], peerSpace: fds[2]}), nil
}

// mapPeer checks and maps a memfd received from a peer.
func mapPeer(fd int) ([]byte, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: not a sealable memfd: %v", ErrHello, err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return nil, fmt.Errorf("%w: memfd size not sealed", ErrHello)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Size < HeaderSize || st.Size > HeaderSize+2*MaxRing {
		return nil, fmt.Errorf("%w: memfd of %d bytes", ErrHello, st.Size)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	if err := checkHeader(mem); err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return mem, nil
}

// checkHeader validates a mapped region's header against its length.
func checkHeader(mem []byte) error {
	if len(mem) < HeaderSize {
		return fmt.Errorf("%w: %d bytes, shorter than the header", ErrHello, len(mem))
	}
	if m := binary.LittleEndian.Uint64(mem[offMagic:]); m != Magic {
		return fmt.Errorf("%w: magic %#x", ErrHello, m)
	}
	if v := binary.LittleEndian.Uint32(mem[offVersion:]); v != Version {
		return fmt.Errorf("%w: layout version %d, want %d", ErrHello, v, Version)
	}
	size := uint64(binary.LittleEndian.Uint32(mem[offRingSize:]))
	if size < MinRing || size > MaxRing || size&(size-1) != 0 || uint64(len(mem)) != HeaderSize+2*size {
		return fmt.Errorf("%w: ring size %d in a region of %d bytes", ErrHello, size, len(mem))
	}
	return nil
}

// Close stops listening.
func (l *Listener) Close() error { return l.ln.Close() }

// Addr returns the Unix socket address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }
