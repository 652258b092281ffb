package rmi

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// Everything of the protocol arrives on the endpoint's one loft receiver,
// and some goroutine must receive it. A fixed reader goroutine would cost
// every call two goroutine hand-offs: the reader wakes the caller waiting
// for a reply, and starts a goroutine for each incoming call (on a 2-core
// machine each is a thread wake-up). So the endpoint has a read token, and
// whoever holds it is the only goroutine in Recv:
//
//   - A caller waiting for a reply takes the token when it is free and
//     reads (leads): it handles whatever arrives (incoming calls start on
//     goroutines of their own, replies go to their callers) and returns as
//     soon as its own reply has come, so a lone call's reply goes from the
//     connection straight to its caller. A caller that finds another caller
//     leading waits (follows) and is given the token when the leader is
//     done; one that finds the background readers holding it waits for its
//     reply from them, unless they read for nobody else (mayLeadLocked):
//     then it interrupts them and is given the token. Pipelined calls that
//     went in the message of its own call do not count: their replies come
//     with its own, in the reply of their chain, and it handles them while
//     it leads (following would hand the reply of every chain over from a
//     background reader to its caller).
//   - The background readers (bgLoop, a pool) hold the token when no caller
//     does and the endpoint needs a reader: it publishes objects, exports
//     objects, or has pending calls no caller waits for (promises,
//     abandoned calls). A background reader that receives a call serves it
//     itself and keeps the token while it does (tServe): nobody reads
//     meanwhile, and it reads again when the call returns. Passing the
//     token on first, to another background reader, would wake that
//     goroutine, and on a machine with an idle core waking a goroutine
//     wakes a thread: over a Unix socket that hand-off made a call take
//     twice as long. So the token goes on only when someone needs it: a
//     caller that waits for a reply takes it (as if it were free) and gives
//     it back to tServe when done; the call asking for its context's Done
//     channel (it may block until cancelled, and a cancel comes as a
//     message) or running longer than inlineFor (it may wait for another
//     incoming call) passes it to another background reader, starting one
//     if none is idle (see unInlineLocked).
//   - An endpoint that needs no reader leaves the token free between calls;
//     a background reader takes it if no caller has within readHandBack (a
//     lookup of a name never published, say, is still answered).
//
// Everything here is guarded by reader.mu, taken before Endpoint.mu when
// both are.
type reader struct {
	mu        sync.Mutex
	cond      sync.Cond // background readers wait for the token
	holder    int8      // tFree, tBG or tCaller
	bgReading bool      // a background reader is in Recv
	closed    bool
	idle      int // background readers waiting in cond
	waiting   int // callers in await
	followers []*pending
	// Every reader receives under ctx, which is cancelled only to
	// interrupt the current reader, and then replaced. (loft's Receiver
	// watches the context of its last Recv until another comes: a fresh
	// context per Recv, cancelled after it, would cost a goroutine each.)
	ctx    context.Context
	cancel context.CancelFunc
	// interruptFn is ep.interruptLeader, made once (a method value made
	// per wait was an allocation per call).
	interruptFn func()
	// afDone is the Done channel of the last context a leading caller
	// waited with (not a served call's), and afStop stops the interruptFn
	// registered on it: it stays registered after the wait, for the next
	// wait with a context that ends with it (a caller's next call), which
	// saves a context.AfterFunc (an allocation, and a map entry in the
	// parent context) per call. Its firing after its wait interrupts
	// whichever caller leads then, which only makes that Recv start again.
	afDone  <-chan struct{}
	afStop  func() bool
	hb      *time.Timer // readHandBack
	hbArmed bool
	// inline numbers the call a background reader serves while it keeps
	// the token (tServe, or tCaller while a caller borrows it); 0 when
	// none. inlineN counts such calls, inlineAt is when it began
	// (monoNow), wd is the timer that ends it after inlineFor.
	inline   uint64
	inlineN  uint64
	inlineAt int64
	wd       *time.Timer
	wdArmed  bool
	wdEnded  int // inline servings the timer ended (for tests)
}

const (
	tFree   = iota // nobody reads
	tBG            // a background reader reads (or is about to)
	tCaller        // a waiting caller reads
	tServe         // nobody reads: a background reader serves a call and reads after it
)

// inlineFor is how long a background reader may serve a call while
// keeping the token before the token goes to another reader (see bgLoop).
// The timer that enforces it is armed when a call starts and no timer
// is, and is left to fire: while calls follow each other it fires every
// inlineFor, not once per call (see Endpoint.laterLocked on timers).
const inlineFor = 10 * time.Millisecond

// inlineSlow is how long a call may take for the next call of its method
// to be served inline: a call that took longer (or asked for its context's
// Done channel) makes the next one pass the token on first, as it would
// keep others waiting. (Passing it on costs a thread wake-up, some tens
// of microseconds over a socket on a small machine.)
const inlineSlow = 100 * time.Microsecond

// monoStart anchors monoNow.
var monoStart = time.Now()

// monoNow is a monotonic clock in nanoseconds, one clock read.
func monoNow() int64 { return int64(time.Since(monoStart)) }

// readHandBack is how long the token may stay free, when the endpoint
// needs no reader, before a background reader takes it. It is not shorter
// for the reason given at loft's conn.readHandBack: a timer firing every
// couple of milliseconds slows everything on the machine.
const readHandBack = 20 * time.Millisecond

// maxIdleReaders is how many background readers may wait for the token;
// more exit.
const maxIdleReaders = 8

func (r *reader) init(ep *Endpoint) {
	r.cond.L = &r.mu
	r.ctx, r.cancel = context.WithCancel(ep.ctx)
	r.interruptFn = ep.interruptLeader
	r.holder = tBG // until the first reader has looked
	r.hb = time.AfterFunc(time.Hour, ep.handBack)
	r.hb.Stop()
	r.wd = time.AfterFunc(time.Hour, ep.inlineWatch)
	r.wd.Stop()
}

// needReader reports whether something may arrive that no caller waits
// for. Caller holds rd.mu.
func (ep *Endpoint) needReaderLocked() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.closed || len(ep.published) > 0 || ep.nexports > 0 || ep.npend > ep.rd.waiting
}

// mayLeadLocked reports whether the caller waiting for pd should read
// instead of the background readers: the endpoint serves no objects
// (publishes or exports none), and every pending call that no caller waits
// for is one of the pipelined calls that went in the message of pd's call,
// whose replies come with (or before) pd's own in the reply of their chain.
// Caller holds rd.mu.
func (ep *Endpoint) mayLeadLocked(pd *pending) bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return !ep.closed && len(ep.published) == 0 && ep.nexports == 0 && ep.npend-ep.rd.waiting <= pd.along
}

// followerMayLeadLocked reports whether the first follower may lead (see
// mayLeadLocked). Caller holds rd.mu.
func (ep *Endpoint) followerMayLeadLocked() bool {
	for _, f := range ep.rd.followers {
		if !f.promoted {
			return ep.mayLeadLocked(f)
		}
	}
	return false
}

// releaseTokenLocked gives the token up: to the first follower, else to
// the background readers if the endpoint needs a reader, else to nobody
// (see readHandBack). Caller holds rd.mu.
func (ep *Endpoint) releaseTokenLocked() {
	r := &ep.rd
	for _, f := range r.followers {
		if !f.promoted {
			f.promoted = true
			r.holder = tCaller
			f.tok <- struct{}{}
			return
		}
	}
	if r.inline != 0 {
		r.holder = tServe // its background reader reads when its call returns
		return
	}
	if ep.needReaderLocked() {
		ep.toReaderLocked()
		return
	}
	r.holder = tFree
	if !r.hbArmed {
		r.hbArmed = true
		r.hb.Reset(readHandBack)
	}
}

// handBack gives a free token to the background readers (readHandBack).
func (ep *Endpoint) handBack() {
	r := &ep.rd
	r.mu.Lock()
	r.hbArmed = false
	ep.toBGLocked()
	r.mu.Unlock()
}

// ensureReader gives a free token to the background readers: something
// may now arrive that no caller waits for. A token kept by a reader
// serving a call goes on too (the call may be the one waiting).
func (ep *Endpoint) ensureReader() {
	r := &ep.rd
	r.mu.Lock()
	ep.unInlineLocked()
	ep.toBGLocked()
	r.mu.Unlock()
}

// toBGLocked gives the token, if free, to the background readers. Caller
// holds rd.mu.
func (ep *Endpoint) toBGLocked() {
	r := &ep.rd
	if r.holder == tFree && !r.closed {
		ep.toReaderLocked()
	}
}

// toReaderLocked gives the token to the background readers: an idle one
// is woken, or one is started if every one is busy serving a call.
// Caller holds rd.mu.
func (ep *Endpoint) toReaderLocked() {
	r := &ep.rd
	r.holder = tBG
	if r.bgReading || r.closed {
		return
	}
	if r.idle > 0 {
		r.cond.Signal()
		return
	}
	ep.wg.Add(1)
	go ep.bgLoop()
}

// unInlineLocked ends the inline serving of a call, if any: the token, if
// nobody reads, goes to another background reader now. (A caller reading
// meanwhile gives it there when done.) Caller holds rd.mu.
func (ep *Endpoint) unInlineLocked() {
	r := &ep.rd
	if r.inline == 0 {
		return
	}
	r.inline = 0
	if r.holder == tServe {
		ep.toReaderLocked()
	}
}

// blocking is called when a served call asks for its context's Done
// channel: it may wait for a cancel, which only a reader would see.
func (ep *Endpoint) blocking() {
	r := &ep.rd
	r.mu.Lock()
	ep.unInlineLocked()
	r.mu.Unlock()
}

// inlineWatch is the inlineFor timer: it ends an inline serving that has
// lasted inlineFor, and waits for the end of a younger one.
func (ep *Endpoint) inlineWatch() {
	r := &ep.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wdArmed = false
	if r.inline == 0 || r.closed {
		return
	}
	if left := time.Duration(r.inlineAt + int64(inlineFor) - monoNow()); left > 0 {
		r.wdArmed = true
		r.wd.Reset(left)
		return
	}
	r.wdEnded++
	ep.unInlineLocked()
}

// interruptLocked ends the Recv of the current reader. Caller holds
// rd.mu.
func (ep *Endpoint) interruptLocked() {
	r := &ep.rd
	r.cancel()
	r.ctx, r.cancel = context.WithCancel(ep.ctx)
}

// interruptLeader ends the Recv of a leading caller: a call was failed
// another way (peerGone), perhaps its own.
func (ep *Endpoint) interruptLeader() {
	r := &ep.rd
	r.mu.Lock()
	if r.holder == tCaller {
		ep.interruptLocked()
	}
	r.mu.Unlock()
}

// closeReader wakes the background readers so that they exit.
func (ep *Endpoint) closeReader() {
	r := &ep.rd
	r.mu.Lock()
	r.closed = true
	if r.afStop != nil {
		r.afStop()
		r.afStop, r.afDone = nil, nil
	}
	r.hb.Stop()
	r.wd.Stop()
	r.cancel()
	r.cond.Broadcast()
	r.mu.Unlock()
}

// bgLoop is a background reader: it waits for the token, reads while it
// holds it, and serves a call it received itself after passing the token
// on. It returns when the endpoint closes, or when enough others are idle.
func (ep *Endpoint) bgLoop() {
	defer ep.wg.Done()
	r := &ep.rd
	r.mu.Lock()
	for {
		for !r.closed && (r.holder != tBG || r.bgReading) {
			r.idle++
			r.cond.Wait()
			r.idle--
		}
		if r.closed {
			r.mu.Unlock()
			return
		}
		r.bgReading = true
		var run job
		var recvErr error
		for {
			// (ctx is taken before the check: an interruption after it
			// ends this Recv.)
			ctx := r.ctx
			if r.closed || ep.ctx.Err() != nil || ep.followerMayLeadLocked() {
				break
			}
			r.mu.Unlock()
			m, err := ep.recv.Recv(ctx)
			if err == nil {
				ep.dispatch(m, nil, &run)
			}
			r.mu.Lock()
			if err != nil && ctx.Err() == nil {
				recvErr = err // the receiver closed (its node was closed?)
			}
			if !run.s.none() || recvErr != nil {
				break
			}
		}
		r.bgReading = false
		if r.closed || ep.ctx.Err() != nil || recvErr != nil {
			r.closed = true
			r.cond.Broadcast()
			r.mu.Unlock()
			if !run.s.none() {
				ep.runChain(run.p, run.s)
			}
			return
		}
		if !run.s.none() && r.holder == tBG && !ep.hasFollowerLocked() && run.s.speed() != speedSlow {
			// Serve the call here, keeping the token (see the top of
			// this file), and read again after it, unless the token
			// went on meanwhile.
			n := ep.startInlineLocked()
			r.mu.Unlock()
			ep.runChain(run.p, run.s)
			r.mu.Lock()
			if ep.endInlineLocked(n, tBG) {
				continue
			}
			if r.idle >= maxIdleReaders {
				r.mu.Unlock()
				return
			}
			continue
		}
		if r.holder == tBG {
			ep.releaseTokenLocked()
		}
		if run.s.none() {
			continue
		}
		// Serve the call here; a caller, or the background reader that
		// releaseTokenLocked woke or started, reads meanwhile.
		r.mu.Unlock()
		ep.runChain(run.p, run.s)
		r.mu.Lock()
		if r.idle >= maxIdleReaders {
			r.mu.Unlock()
			return
		}
	}
}

// startInlineLocked starts the inline serving of a call by the token's
// holder and returns its number. Caller holds rd.mu.
func (ep *Endpoint) startInlineLocked() uint64 {
	r := &ep.rd
	r.holder = tServe
	r.inlineN++
	r.inline, r.inlineAt = r.inlineN, monoNow()
	if !r.wdArmed {
		r.wdArmed = true
		r.wd.Reset(inlineFor)
	}
	return r.inline
}

// endInlineLocked ends inline serving n: it reports whether its goroutine
// holds the token again (as holder), and not if the token went on
// meanwhile. Caller holds rd.mu.
func (ep *Endpoint) endInlineLocked(n uint64, holder int8) bool {
	r := &ep.rd
	if r.inline != n {
		return false
	}
	r.inline = 0
	if r.holder != tServe {
		return false // a caller borrowed it, and gives it on when done
	}
	r.holder = holder
	return true
}

// serveLeading serves the call of run, received by a caller reading for
// its own reply: inline if its method is known to be quick and the caller
// is the only one waiting, else on a goroutine of its own. It reports
// false if the caller no longer holds the token after it.
func (ep *Endpoint) serveLeading(run job) bool {
	r := &ep.rd
	r.mu.Lock()
	if r.holder != tCaller || r.inline != 0 || r.closed || ep.hasFollowerLocked() || run.s.speed() != speedQuick {
		r.mu.Unlock()
		go ep.runChain(run.p, run.s)
		// (The call runs now, on this thread, while the caller waits
		// for the CPU, not the other way round: the reply the caller
		// waits for typically needs this call's answer first.)
		runtime.Gosched()
		return true
	}
	n := ep.startInlineLocked()
	r.mu.Unlock()
	ep.runChain(run.p, run.s)
	r.mu.Lock()
	defer r.mu.Unlock()
	return ep.endInlineLocked(n, tCaller)
}

// hasFollowerLocked reports whether a caller waits for the token. Caller
// holds rd.mu.
func (ep *Endpoint) hasFollowerLocked() bool {
	for _, f := range ep.rd.followers {
		if !f.promoted {
			return true
		}
	}
	return false
}

// await waits for the reply of a call whose pending entry is pd, leading
// or following. It returns ctx's error if ctx ends first.
func (ep *Endpoint) await(ctx context.Context, pd *pending) (*wmsg, error) {
	select {
	case m := <-pd.ch:
		return m, nil
	default:
	}
	r := &ep.rd
	r.mu.Lock()
	r.waiting++
	defer func() {
		r.mu.Lock()
		r.waiting--
		r.mu.Unlock()
	}()
	lead := true // false once the receiver closed under a leader
	// leadNow reads as the token holder; it reports whether the call is
	// over. Called and returning with r.mu held when it is not.
	leadNow := func() (*wmsg, bool, error) {
		r.holder = tCaller
		r.mu.Unlock()
		m, got, lost, err := ep.lead(ctx, pd)
		if got || err != nil {
			return m, true, err
		}
		lead = lost
		r.mu.Lock()
		return nil, false, nil
	}
	for {
		if lead && (r.holder == tFree || r.holder == tServe) && !r.closed {
			if m, over, err := leadNow(); over {
				return m, err
			}
			continue
		}
		if lead && r.holder == tBG && r.bgReading && ep.mayLeadLocked(pd) {
			ep.interruptLocked() // a background reader reads for nobody else: take over
		}
		if pd.tok == nil {
			pd.tok = make(chan struct{}, 1)
		}
		r.followers = append(r.followers, pd)
		r.mu.Unlock()
		var m *wmsg
		got, done := false, false
		select {
		case m = <-pd.ch:
			got = true
		case <-pd.tok:
		case <-doneOf(ctx):
			done = true
		}
		r.mu.Lock()
		for i, f := range r.followers {
			if f == pd {
				r.followers = append(r.followers[:i], r.followers[i+1:]...)
				break
			}
		}
		if pd.promoted {
			pd.promoted = false
			if got {
				<-pd.tok
			}
			if !got && !done && lead {
				select {
				case m = <-pd.ch:
					got = true
				default:
				}
			}
			if got || done || !lead {
				ep.releaseTokenLocked()
			} else {
				if m, over, err := leadNow(); over {
					return m, err
				}
				continue
			}
		}
		if got {
			r.mu.Unlock()
			return m, nil
		}
		if done {
			r.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

// lead receives for everybody while its caller holds the token, until the
// reply for pd has come (got), ctx ended (err), the token went on while
// the caller served a call inline (lost), or the receiver closed (none).
// It gives the token up before returning, unless lost.
func (ep *Endpoint) lead(ctx context.Context, pd *pending) (m *wmsg, got, lost bool, err error) {
	r := &ep.rd
	stop := ep.leaderDone(ctx)
	for {
		r.mu.Lock()
		rctx := r.ctx // (before the checks: an interruption after them ends this Recv)
		r.mu.Unlock()
		select {
		case m = <-pd.ch:
			got = true
		default:
		}
		if got {
			break
		}
		if err = ctx.Err(); err != nil {
			break
		}
		lm, rerr := ep.recv.Recv(rctx)
		if rerr != nil {
			if rctx.Err() != nil {
				continue // interrupted
			}
			break // the receiver closed
		}
		var run job
		ep.dispatch(lm, pd, &run)
		if run.s.none() {
			continue
		}
		select {
		case m = <-pd.ch: // (the caller's reply came too: it goes first)
			got = true
			go ep.runChain(run.p, run.s)
		default:
			lost = !ep.serveLeading(run)
		}
		if got || lost {
			break
		}
	}
	if stop != nil {
		stop()
	}
	if !lost {
		r.mu.Lock()
		ep.releaseTokenLocked()
		r.mu.Unlock()
	}
	return m, got, lost, err
}

// leaderDone has a leading caller's Recv interrupted when ctx ends, as
// afterDone(ctx, r.interruptFn); for a context other than a served call's
// it keeps the registration for the next wait (see reader.afDone) and
// returns nil.
func (ep *Endpoint) leaderDone(ctx context.Context) (stop func() bool) {
	if _, ok := ctx.(*callCtx); ok {
		return afterDone(ctx, ep.rd.interruptFn)
	}
	done := ctx.Done()
	if done == nil {
		return nil
	}
	r := &ep.rd
	r.mu.Lock()
	if r.afDone == done || r.closed {
		r.mu.Unlock()
		return nil
	}
	old := r.afStop
	r.afDone, r.afStop = done, context.AfterFunc(ctx, r.interruptFn)
	r.mu.Unlock()
	if old != nil {
		old()
	}
	return nil
}

// readSoon makes sure that a free token goes to the background readers
// within readHandBack: a promise's reply may come that no caller waits
// for (a caller that waits on the promise calls ensureReader).
func (ep *Endpoint) readSoon() {
	r := &ep.rd
	r.mu.Lock()
	if r.holder == tFree && !r.hbArmed && !r.closed {
		r.hbArmed = true
		r.hb.Reset(readHandBack)
	}
	r.mu.Unlock()
}
