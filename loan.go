package loft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loft-ipc/loft/wire"
	"golang.org/x/sys/unix"
)

// Zero-copy loans: a sender borrows a buffer inside a shared-memory pool,
// fills it and publishes it; the receiver reads it in place and releases it.
//
// Each connection that carries loans has, per direction, one pool: a sealed
// memfd created by the sending side and passed once to the peer (POOL frame
// with the file attached). A LOAN frame names a range of it; a RELEASE frame
// gives the range back. Pools are bounded (Options.LoanPoolSize); a pool and
// every range in it are reclaimed when the connection ends, whichever side
// died. A mapping is unmapped only once no loan or message refers to it.

// Errors of the loan API.
var (
	// ErrLoanTooLarge means a loan asked for more than the pool holds.
	ErrLoanTooLarge = errors.New("loft: loan larger than the loan pool")
	// ErrLoanUsed means a loan was already sent or discarded.
	ErrLoanUsed = errors.New("loft: loan already sent or discarded")
)

// DefaultLoanPoolSize is the size of a connection's loan pool when
// Options.LoanPoolSize is zero.
const DefaultLoanPoolSize = 64 << 20

const loanBlock = 64 << 10

// mapping is a mapped pool, unmapped when its last user lets go.
type mapping struct {
	mem  []byte
	refs atomic.Int64
}

func (m *mapping) unref() {
	if m.refs.Add(-1) == 0 {
		unix.Munmap(m.mem)
	}
}

// outPool is the sending side's pool on one connection.
type outPool struct {
	id    uint64
	m     *mapping
	mu    sync.Mutex
	used  []bool        // per block
	spans map[int]int   // offset of a live loan -> blocks
	sent  map[int]bool  // loans handed to the peer, not yet released
	lent  map[int]uint8 // lent ranges (see lend): what of them happened
	freed chan struct{} // closed and replaced when blocks are freed
	dead  bool
	// populated is how much of the pool, from its start, was faulted in
	// ahead of use (see populateLocked).
	populated int
}

// inPool is the receiving side's mapping of a peer's pool.
type inPool struct {
	m    *mapping
	size uint64
	// populated is how much of the mapping, from its start, was faulted in
	// ahead of reads (see populate).
	populated atomic.Uint64
}

// populate maps the pool's pages up to end, and a little more, in one
// system call (madvise MADV_POPULATE_READ) the first time a loan reaches
// them, instead of a page fault per page read (see outPool.populateLocked,
// which faults them in on the sender's side). Called by the conn's reader.
func (p *inPool) populate(end uint64) {
	from := p.populated.Load()
	if end <= from {
		return
	}
	to := min((end+populateStep-1)/populateStep*populateStep, uint64(len(p.m.mem)))
	_ = unix.Madvise(p.m.mem[from:to], unix.MADV_POPULATE_READ)
	p.populated.Store(to)
}

var poolIDs atomic.Uint64

// newOutPool creates a sealed memfd of size bytes and maps it.
func newOutPool(size int) (*outPool, int, error) {
	fd, err := unix.MemfdCreate("loft-loans", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, -1, os.NewSyscallError("memfd_create", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("fcntl", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, -1, os.NewSyscallError("mmap", err)
	}
	m := &mapping{mem: mem}
	m.refs.Store(1) // the connection's
	p := &outPool{
		id:    poolIDs.Add(1),
		m:     m,
		used:  make([]bool, size/loanBlock),
		spans: map[int]int{},
		sent:  map[int]bool{},
		lent:  map[int]uint8{},
		freed: make(chan struct{}),
	}
	return p, fd, nil
}

// alloc reserves n bytes, waiting for releases while the pool is full.
func (p *outPool) alloc(ctx context.Context, n int, c *conn) (int, error) {
	blocks := (n + loanBlock - 1) / loanBlock
	if blocks == 0 {
		blocks = 1
	}
	if blocks > len(p.used) {
		return 0, fmt.Errorf("%w: %d bytes, pool of %d", ErrLoanTooLarge, n, len(p.used)*loanBlock)
	}
	for {
		p.mu.Lock()
		if p.dead {
			p.mu.Unlock()
			return 0, fmt.Errorf("%w: the connection carrying the loan pool closed", ErrPeerGone)
		}
		if off, ok := p.takeLocked(blocks); ok {
			p.mu.Unlock()
			return off, nil
		}
		ch := p.freed
		p.mu.Unlock()
		c.waitingOn(false) // RELEASE frames come on c
		select {
		case <-ch:
		case <-ctx.Done():
		}
		c.doneWaiting(false)
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
}

// takeLocked reserves the first run of blocks free blocks. Caller holds
// p.mu.
func (p *outPool) takeLocked(blocks int) (int, bool) {
	run := 0
	for i, u := range p.used {
		if u {
			run = 0
			continue
		}
		run++
		if run == blocks {
			start := i - blocks + 1
			for j := start; j <= i; j++ {
				p.used[j] = true
			}
			p.spans[start*loanBlock] = blocks
			p.m.refs.Add(1)
			p.populateLocked((i + 1) * loanBlock)
			return start * loanBlock, true
		}
	}
	return 0, false
}

// populateStep is how much of a pool populateLocked faults in at a time.
const populateStep = 8 << 20

// populateLocked faults in the pool's pages up to end, and a little more,
// in one system call (madvise MADV_POPULATE_WRITE) the first time a loan
// reaches them. Under load the pool's loans cycle through all of it, and
// each page's first write was a page fault of its own: on a virtual
// machine they were a tenth of a stream of 1 MiB loans over a new
// connection (BENCHMARKS.md). A pool used lightly stays small. Errors (a
// kernel before 5.14) leave the pages to fault as before. Caller holds
// p.mu.
func (p *outPool) populateLocked(end int) {
	if end <= p.populated {
		return
	}
	to := min((end+populateStep-1)/populateStep*populateStep, len(p.m.mem))
	_ = unix.Madvise(p.m.mem[p.populated:to], unix.MADV_POPULATE_WRITE)
	p.populated = to
}

// Lent ranges: a large Send over shared memory copies the message into the
// pool and sends a LOAN with FlagCopy instead of framing the bytes (see
// Sender.lendLocked). The receiver copies the bytes out when the frame
// arrives and RELEASEs the range at once; the sender keeps the range as its
// retained copy until the message is acknowledged. The range is free once
// both have happened.
const (
	lentReleased uint8 = 1 << iota // the receiver copied the bytes out
	lentRetired                    // the sender no longer retains them
)

// lend reserves n bytes for a lent range without waiting: false when the
// pool is full or dead (the message is then framed as usual).
func (p *outPool) lend(n int) (int, bool) {
	blocks := max(1, (n+loanBlock-1)/loanBlock)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead || blocks > len(p.used) {
		return 0, false
	}
	off, ok := p.takeLocked(blocks)
	if ok {
		p.lent[off] = 0
		p.sent[off] = true // the connection's end takes it back like a loan
	}
	return off, ok
}

// settle records what of a lent range happened (lentReleased or
// lentRetired) and frees the range once both have. It reports false if off
// is not a lent range or that already happened.
func (p *outPool) settle(off int, what uint8) bool {
	p.mu.Lock()
	st, ok := p.lent[off]
	if !ok || st&what != 0 {
		p.mu.Unlock()
		return false
	}
	st |= what
	p.lent[off] = st
	p.mu.Unlock()
	if st == lentReleased|lentRetired {
		p.free(off)
	}
	return true
}

// release handles a RELEASE of off: a loan is freed, a lent range settled.
func (p *outPool) release(off int) bool {
	p.mu.Lock()
	_, lent := p.lent[off]
	p.mu.Unlock()
	if lent {
		return p.settle(off, lentReleased)
	}
	return p.free(off)
}

// free gives a loan's blocks back; false if off is not a live loan.
func (p *outPool) free(off int) bool {
	p.mu.Lock()
	blocks, ok := p.spans[off]
	if ok {
		delete(p.spans, off)
		delete(p.sent, off)
		delete(p.lent, off)
		for j := off / loanBlock; j < off/loanBlock+blocks; j++ {
			p.used[j] = false
		}
		close(p.freed)
		p.freed = make(chan struct{})
	}
	p.mu.Unlock()
	if ok {
		p.m.unref()
	}
	return ok
}

// isDead reports whether kill has run.
func (p *outPool) isDead() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dead
}

// kill marks the pool dead when its connection ends: waiting loans fail,
// and the mapping goes once the loans still held let go.
func (p *outPool) kill() {
	p.mu.Lock()
	if p.dead {
		p.mu.Unlock()
		return
	}
	p.dead = true
	close(p.freed)
	p.freed = make(chan struct{})
	// The peer will release nothing more: what it held is ours again.
	var sent []int
	for off := range p.sent {
		sent = append(sent, off)
	}
	p.mu.Unlock()
	for _, off := range sent {
		p.free(off)
	}
	p.m.unref()
}

// Loan is a buffer in shared memory, borrowed by a sender to build a
// message in place. Fill Bytes, then SendLoan; or Discard. A Loan is not
// safe for concurrent use.
type Loan struct {
	s    *Sender
	l    *link
	pool *outPool
	off  int
	n    int
	used bool
}

// Bytes returns the loaned buffer.
func (l *Loan) Bytes() []byte { return l.pool.m.mem[l.off : l.off+l.n : l.off+l.n] }

// Discard gives an unsent loan back.
func (l *Loan) Discard() {
	if l.used {
		return
	}
	l.used = true
	l.pool.free(l.off)
}

// Loan borrows size bytes of shared memory on the way to one of the
// channel's receivers. The receiver reads the message in place, with no
// copy after the sender's own writes; it must call Message.Release when done.
// Loans need a same-host receiver (shared memory or Unix socket); each
// connection's pool is bounded (Options.LoanPoolSize), and Loan waits for
// room when it is full.
func (s *Sender) Loan(ctx context.Context, size int) (*Loan, error) {
	if size < 0 {
		return nil, &OpError{Op: "loan", Name: s.name, Err: fmt.Errorf("%w: negative size", ErrLoanTooLarge)}
	}
	for {
		s.mu.Lock()
		var l *link
		n := len(s.links)
		for i := 0; i < n; i++ {
			x := s.links[(s.rr+i)%n]
			if x.c.uc != nil || x.c.fc != nil {
				l = x
				s.rr = (s.rr + i + 1) % n
				break
			}
		}
		if l == nil {
			if s.hadLinks {
				s.mu.Unlock()
				return nil, &OpError{Op: "loan", Name: s.name, Err: fmt.Errorf("%w: no receiver on this host", ErrPeerGone)}
			}
			err := s.waitLocked(ctx, true)
			s.mu.Unlock()
			if err != nil {
				return nil, &OpError{Op: "loan", Name: s.name, Err: err}
			}
			continue
		}
		if size > l.props.MaxMessageSize {
			s.mu.Unlock()
			return nil, &OpError{Op: "loan", Name: s.name, Err: fmt.Errorf("%w: %d bytes, the channel's limit is %d", ErrTooLarge, size, l.props.MaxMessageSize)}
		}
		// The pool's room may wait for ACKs (of large messages Send lent
		// it): count as a waiter, so that a conn's reader applies them
		// itself instead of leaving them for this Sender's next Send (see
		// Sender.ack), and apply any left already.
		s.waiters.Add(1)
		if s.acksLeft.Load() {
			s.takeLeftAcksLocked()
		}
		s.mu.Unlock()
		p, err := l.c.loanPool()
		if err != nil {
			s.waiters.Add(-1)
			return nil, &OpError{Op: "loan", Name: s.name, Err: err}
		}
		off, err := p.alloc(ctx, size, l.c)
		s.waiters.Add(-1)
		if err != nil {
			return nil, &OpError{Op: "loan", Name: s.name, Err: err}
		}
		return &Loan{s: s, l: l, pool: p, off: off, n: size}, nil
	}
}

// SendLoan publishes a loan as one message, blocking like Send for credit
// on the receiver the loan was made for. After SendLoan the buffer belongs
// to the receiver: do not touch it. Under AtLeastOnce, if that receiver dies
// before taking the message, the bytes are copied out and sent again to
// another receiver like any other message.
func (s *Sender) SendLoan(ctx context.Context, loan *Loan) error {
	if loan.used || loan.s != s {
		return &OpError{Op: "send", Name: s.name, Err: ErrLoanUsed}
	}
	l := loan.l
	s.mu.Lock()
	for l.sent >= l.limit && !l.dead && !s.closed {
		if err := s.waitLocked(ctx, false); err != nil {
			s.mu.Unlock()
			return &OpError{Op: "send", Name: s.name, Err: err}
		}
	}
	if l.dead || s.closed {
		s.mu.Unlock()
		loan.Discard()
		return &OpError{Op: "send", Name: s.name, Err: fmt.Errorf("%w: the receiver the loan was made for went away", ErrPeerGone)}
	}
	loan.used = true
	loan.pool.mu.Lock()
	loan.pool.sent[loan.off] = true
	loan.pool.mu.Unlock()
	s.nextID++
	id := s.nextID
	c := l.c
	floor := min(s.floorLocked(), id)
	c.sendFrame(wire.TLoan, loanPayload(l.id, floor, id, loan.pool.id, loan.off, loan.n))
	l.sent++
	s.sentN++
	if l.props.Delivery != AtMostOnce {
		l.unack.push(retained{id: id, data: loan.Bytes(), loan: true})
		l.unackN++
	}
	s.mu.Unlock()
	return nil
}

// loanPayload is the payload of a LOAN frame (wire/SPEC.md): message id of
// attachment att, whose n bytes are at off in pool.
func loanPayload(att uint32, floor, id, pool uint64, off, n int) []byte {
	p := binary.AppendUvarint(make([]byte, 0, 48), uint64(att))
	p = binary.AppendUvarint(p, floor)
	p = binary.AppendUvarint(p, id)
	p = binary.AppendUvarint(p, pool)
	p = binary.AppendUvarint(p, uint64(off))
	return binary.AppendUvarint(p, uint64(n))
}

// loanPool returns the connection's outgoing pool, creating it and passing
// it to the peer on first use.
func (c *conn) loanPool() (*outPool, error) {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	if c.pool != nil {
		return c.pool, nil
	}
	if c.isClosed() {
		return nil, fmt.Errorf("%w: connection closed", ErrPeerGone)
	}
	if c.uc == nil && c.fc == nil {
		return nil, fmt.Errorf("%w: loans need a peer on this host", ErrUnsupported)
	}
	size := c.node.opts.LoanPoolSize
	if size <= 0 {
		size = DefaultLoanPoolSize
	}
	size = (size + loanBlock - 1) / loanBlock * loanBlock
	p, fd, err := newOutPool(size)
	if err != nil {
		return nil, err
	}
	payload := binary.AppendUvarint(nil, p.id)
	payload = binary.AppendUvarint(payload, uint64(size))
	c.wmu.Lock()
	c.closeOpenLocked()
	c.appendAcksLocked()
	off := len(c.out)
	c.out = wire.AppendHeader(c.out, wire.TPool, wire.FlagFiles)
	c.out = append(c.out, payload...)
	c.out = binary.AppendUvarint(c.out, 1)
	c.unsealed = append(c.unsealed, [2]int{off, len(c.out)})
	c.marks = append(c.marks, fileMark{off: off, fds: []int{fd}})
	w := c.wakeLocked()
	c.wmu.Unlock()
	if w {
		c.signal()
	}
	c.pool = p
	return p, nil
}

// takeFiles claims n files that arrived with the frame being handled.
func (c *conn) takeFiles(n uint64) ([]int, error) {
	if n > 64 {
		return nil, protoErr("frame claims %d files, at most 64 pass at once", n)
	}
	if c.fc != nil {
		fds, err := c.fc.TakeFiles(int(n), 5*time.Second)
		if err != nil {
			return nil, protoErr("%v", err)
		}
		return fds, nil
	}
	if n > uint64(len(c.fdq)) {
		return nil, protoErr("frame claims %d files, %d arrived", n, len(c.fdq))
	}
	fds := c.fdq[:n:n]
	c.fdq = c.fdq[n:]
	return fds, nil
}

// handlePool maps a pool the peer passed (read-only).
func (c *conn) handlePool(d *wire.Decoder, flags uint16) error {
	id := d.Uvarint()
	size := d.Uvarint()
	nf := d.Uvarint()
	if err := d.End(); err != nil {
		return err
	}
	if flags&wire.FlagFiles == 0 || nf != 1 {
		return protoErr("POOL without its file")
	}
	fds, err := c.takeFiles(nf)
	if err != nil {
		return err
	}
	fd := fds[0]
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return protoErr("pool file: %v", err)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK) == 0 {
		return protoErr("pool is not a memfd sealed against shrinking")
	}
	if size == 0 || size > 1<<34 || uint64(st.Size) != size {
		return protoErr("pool of %d bytes announced as %d", st.Size, size)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return protoErr("map pool: %v", err)
	}
	m := &mapping{mem: mem}
	m.refs.Store(1)
	c.lmu.Lock()
	if c.inPools == nil {
		c.inPools = map[uint64]*inPool{}
	}
	if old := c.inPools[id]; old != nil {
		old.m.unref()
	}
	c.inPools[id] = &inPool{m: m, size: size}
	c.lmu.Unlock()
	return nil
}

// loanRef ties a received message to its place in a pool.
type loanRef struct {
	c    *conn
	m    *mapping
	pool uint64
	off  uint64
	done atomic.Bool
}

func (r *loanRef) release() { r.releaseNow(true) }

// releaseNow sends the RELEASE at once, or lazily (see conn.sendLazy) when
// nobody waits for it: a lent range, which the sender needs back only once
// the message's ACK, which carries the RELEASE along, comes too.
func (r *loanRef) releaseNow(now bool) {
	if r == nil || !r.done.CompareAndSwap(false, true) {
		return
	}
	if !r.c.isClosed() {
		p := binary.AppendUvarint(nil, r.pool)
		p = binary.AppendUvarint(p, r.off)
		if now {
			r.c.sendFrameNow(wire.TRelease, p)
		} else {
			r.c.sendLazy(wire.TRelease, p)
		}
	}
	r.m.unref()
}

// handleLoan delivers a loaned message. A lent one (FlagCopy) is copied out
// and its range released at once: the message is then like any other.
func (c *conn) handleLoan(d *wire.Decoder, flags uint16) error {
	att := uint32(d.Uvarint())
	floor := d.Uvarint()
	id := d.Uvarint()
	pool := d.Uvarint()
	off := d.Uvarint()
	n := d.Uvarint()
	if err := d.End(); err != nil {
		return err
	}
	c.lmu.Lock()
	p := c.inPools[pool]
	a := c.inAtts[att]
	if p != nil {
		p.m.refs.Add(1) // while the map holds the pool, its mapping is there
	}
	c.lmu.Unlock()
	if p == nil {
		return protoErr("LOAN in unknown pool %d", pool)
	}
	ref := &loanRef{c: c, m: p.m, pool: pool, off: off}
	if off > p.size || n > p.size-off {
		p.m.unref()
		return protoErr("LOAN of %d bytes at %d outside a pool of %d", n, off, p.size)
	}
	if a == nil {
		ref.release()
		return nil
	}
	if n > uint64(a.r.opts.MaxMessageSize) {
		ref.release()
		return protoErr("loaned message of %d bytes above the %d-byte limit of %q", n, a.r.opts.MaxMessageSize, a.r.name)
	}
	p.populate(off + n)
	m := Message{Data: p.m.mem[off : off+n : off+n], From: a.remote, ID: id, loan: ref}
	if flags&wire.FlagCopy != 0 {
		m.Data, m.loan = c.carve(m.Data), nil
		ref.releaseNow(false)
	}
	return a.r.deliverOne(a, floor, m)
}

// carveChunk is the size of the chunks lent messages are copied into (a
// message kept by the application keeps its whole chunk alive, as a framed
// one does). It stays at 4 MiB, not wire.MaxChunk: lent messages are large
// and few, and a chunk is made for the first of them however slow they
// come.
const carveChunk = 4 << 20

// carve returns a copy of b on the Go heap, cut from a chunk shared with
// the lent messages before and after it, as wire.Reader does for framed
// ones: a fresh allocation per large message made the collector run every
// few messages and the kernel fault its pages in again each time. Reader
// only (the baton holder).
func (c *conn) carve(b []byte) []byte {
	if len(b) > len(c.carved) {
		c.carved = wire.Alloc(max(carveChunk, len(b))) // not zeroed: copies fill it
	}
	d := c.carved[:len(b):len(b)]
	c.carved = c.carved[len(b):]
	copy(d, b)
	return d
}

// handleRelease frees a loan the peer is done with.
func (c *conn) handleRelease(d *wire.Decoder) error {
	pool := d.Uvarint()
	off := d.Uvarint()
	if err := d.End(); err != nil {
		return err
	}
	c.lmu.Lock()
	p := c.pool
	c.lmu.Unlock()
	if p != nil && p.id == pool && p.isDead() {
		// The connection is ending and the pool took its loans back
		// (kill): a RELEASE the peer sent meanwhile is late, not wrong.
		return nil
	}
	if p == nil || p.id != pool || off > uint64(len(p.m.mem)) || !p.release(int(off)) {
		return protoErr("RELEASE of %d in pool %d: not a live loan", off, pool)
	}
	return nil
}

// closePools drops this connection's pools when it ends.
func (c *conn) closePools() {
	c.lmu.Lock()
	p := c.pool
	ins := c.inPools
	c.inPools = nil
	c.lmu.Unlock()
	if p != nil {
		p.kill()
	}
	for _, ip := range ins {
		ip.m.unref()
	}
}
