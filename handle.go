package loft

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Handle runs fn on every message, with at most concurrency calls at once
// (1 when concurrency < 1), until ctx ends or the receiver closes. A slow fn
// slows the senders: a message is taken from the queue only when a worker
// is free, and the queue is bounded by the channel's capacity. A message is
// acknowledged only once fn has returned, so under AtLeastOnce a process
// that dies in the middle of fn gets the message sent again to another
// receiver. Handle returns when every worker has returned.
//
// One worker receives at a time, and runs fn on what it took itself. While
// it does, another worker receives if messages wait behind the one taken
// (then Handle counts as busy for a while, and keeps one receiving
// whenever a worker runs fn), if the last fn took over 100 µs, or once fn
// has run for 10 ms: with quick messages coming one at a time, a worker
// waiting to receive beside the one that receives would be woken for
// every message, a goroutine wake-up each (a round trip through Handle
// with four workers took twice as long over shared memory).
func (r *Receiver) Handle(ctx context.Context, concurrency int, fn func(context.Context, Message)) error {
	if concurrency < 1 {
		concurrency = 1
	}
	h := &handler{r: r}
	h.cond = sync.NewCond(&h.mu)
	stop := context.AfterFunc(ctx, func() { h.end(ctx.Err()) })
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- h.work(ctx, fn)
		}()
	}
	wg.Wait()
	h.mu.Lock()
	if h.wd != nil {
		h.wd.Stop()
	}
	h.mu.Unlock()
	return <-errs
}

// handleInline is how long fn may run with nobody receiving before another
// of Handle's workers starts to; handleBusy is how many takes Handle stays
// busy after one that found messages waiting behind it; after an fn that
// took over handleSlow, the next one runs with another worker receiving.
const (
	handleInline = 10 * time.Millisecond
	handleBusy   = 64
	handleSlow   = 100 * time.Microsecond
)

// handleWatchdogWakes counts the workers the watchdog set receiving (for
// tests).
var handleWatchdogWakes atomic.Int64

// handler is the state Handle's workers share. What every message touches
// is atomic; the mutex is for the workers that wait aside and for the
// watchdog.
type handler struct {
	r    *Receiver
	mu   sync.Mutex
	cond *sync.Cond

	recv   atomic.Int32 // workers in recv (more than one only while busy)
	spares atomic.Int32 // workers waiting while another receives (changed under mu)
	busy   atomic.Int32 // takes left in busy mode
	slow   atomic.Bool  // the last fn timed took over handleSlow (fn is timed when not busy)
	done   atomic.Bool  // set under mu, with err
	err    error        // why the workers end (under mu)

	// Under mu.
	runN, run uint64 // numbers the runs of fn with nobody receiving; the one on now
	runAt     int64  // when it started (monoNow)
	wd        *time.Timer
	wdArmed   bool
}

// work is one of Handle's workers. It returns why it ended.
func (h *handler) work(ctx context.Context, fn func(context.Context, Message)) error {
	for {
		// Wait while another worker receives, unless busy (then all
		// receive, as they would all wait in Recv). A waiting worker is
		// woken (Signal) when it is to receive, or at the end (Broadcast).
		if h.recv.Load() > 0 && h.busy.Load() == 0 && !h.done.Load() {
			h.mu.Lock()
			for !h.done.Load() && h.recv.Load() > 0 && h.busy.Load() == 0 {
				h.spares.Add(1)
				h.cond.Wait()
				h.spares.Add(-1)
			}
			h.mu.Unlock()
		}
		if h.done.Load() {
			h.mu.Lock()
			err := h.err
			h.mu.Unlock()
			return err
		}
		h.recv.Add(1)
		var m Message
		var queued int // messages left in the queue by this take
		a, idx, err := h.r.recv(ctx, true, &m, &queued)
		h.recv.Add(-1)
		if err != nil {
			h.end(err)
			return err
		}

		busy := h.busy.Load()
		if queued > 0 {
			if busy != handleBusy {
				h.busy.Store(handleBusy)
			}
			busy = handleBusy
		} else if busy > 0 {
			h.busy.CompareAndSwap(busy, busy-1) // (a race loses a count: harmless)
			busy--
		}
		var run uint64
		if h.spares.Load() > 0 {
			h.mu.Lock()
			if busy > 0 || h.slow.Load() {
				h.cond.Signal() // another receives while fn runs
			} else {
				run = h.startRunLocked()
			}
			h.mu.Unlock()
		}
		timed := busy == 0 // (when busy, fn's time decides nothing: spare the clock reads)
		var t0 int64
		if timed {
			t0 = monoNow()
		}

		fn(ctx, m)
		if timed {
			if slow := time.Duration(monoNow()-t0) > handleSlow; h.slow.Load() != slow {
				h.slow.Store(slow)
			}
		}
		h.r.finish(a, idx)
		if run != 0 {
			h.mu.Lock()
			if h.run == run {
				h.run = 0
			}
			h.mu.Unlock()
		}
	}
}

// startRunLocked records that fn runs with nobody receiving, and arms the
// watchdog that asks a waiting worker to receive if it runs too long.
func (h *handler) startRunLocked() uint64 {
	h.runN++
	h.run, h.runAt = h.runN, monoNow()
	if !h.wdArmed {
		h.wdArmed = true
		if h.wd == nil {
			h.wd = time.AfterFunc(handleInline, h.watchdog)
		} else {
			h.wd.Reset(handleInline)
		}
	}
	return h.run
}

func (h *handler) watchdog() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.wdArmed = false
	if h.run == 0 || h.done.Load() {
		return
	}
	if age := time.Duration(monoNow() - h.runAt); age < handleInline {
		h.wdArmed = true
		h.wd.Reset(handleInline - age)
		return
	}
	h.run = 0
	if h.recv.Load() == 0 && h.spares.Load() > 0 {
		handleWatchdogWakes.Add(1)
		h.cond.Signal()
	}
}

// end makes every worker return err (the first reason given).
func (h *handler) end(err error) {
	h.mu.Lock()
	if !h.done.Load() {
		h.err = err
		h.done.Store(true)
		h.cond.Broadcast()
	}
	h.mu.Unlock()
}
