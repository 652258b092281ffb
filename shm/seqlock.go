//go:build linux

package shm

import (
	"context"
	"encoding/binary"
	"fmt"
	"reflect"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// Seqlock holds a value of a fixed-size, pointer-free type T in shared memory
// and lets any number of readers take consistent snapshots without blocking
// the writer. Zeroed memory is a valid Seqlock holding the zero T.
//
// Store may be called from several goroutines and processes: writers take an
// internal robust lock word, so one Store runs at a time. If a writer dies in
// the middle of a Store, the sequence stays odd and Load waits until the next
// Store, which takes the writer word over from the dead writer and overwrites
// the whole value (LoadContext reports such a dead writer as ErrWriterDead).
// Load retries until it reads the value with no Store running, so it never
// returns a torn value; a Load overlapping a never-ending stream of Stores
// can starve.
//
// Every byte of the value is copied with 64-bit atomic loads and stores, so
// the copies are race-free under the Go memory model; a C peer must do the
// same (see LAYOUT.md).
//
// A Seqlock value is a handle; it is safe for concurrent use by multiple
// goroutines and processes.
type Seqlock[T any] struct {
	w    lockWord
	seq  *uint32
	data []uint64
	size int
}

// SeqlockSize returns the number of bytes a Seqlock[T] occupies in a region:
// a 16-byte header followed by T rounded up to a multiple of 8 bytes.
func SeqlockSize[T any]() int {
	var v T
	return 16 + (int(unsafe.Sizeof(v))+7)&^7
}

// NewSeqlock returns a handle to the Seqlock[T] at user-area offset off of r.
// It fails with ErrType if T contains pointers, strings, slices, maps,
// channels, funcs, interfaces or uintptr (values that mean nothing in another
// process), and with ErrOffset if off is not 8-byte aligned or the Seqlock
// does not fit.
func NewSeqlock[T any](r *Region, off int) (*Seqlock[T], error) {
	t := reflect.TypeFor[T]()
	if bad, kind := checkPlain(t, "value"); bad != "" {
		return nil, fmt.Errorf("shm: NewSeqlock[%s]: %s has kind %s, which means nothing in another process: %w", t, bad, kind, ErrType)
	}
	size := SeqlockSize[T]()
	p, err := r.at(off, size, "NewSeqlock")
	if err != nil {
		return nil, err
	}
	if _, _, err := selfID(); err != nil {
		return nil, err
	}
	return &Seqlock[T]{
		w:    lockWord{p: (*uint64)(p)},
		seq:  (*uint32)(unsafe.Add(p, 8)),
		data: unsafe.Slice((*uint64)(unsafe.Add(p, 16)), (size-16)/8),
		size: int(t.Size()),
	}, nil
}

// checkPlain finds the first part of t (named from path) whose values cannot
// be shared between processes; bad is "" if there is none.
func checkPlain(t reflect.Type, path string) (bad string, kind reflect.Kind) {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return "", 0
	case reflect.Array:
		return checkPlain(t.Elem(), path+"[0]")
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if bad, kind := checkPlain(f.Type, path+"."+f.Name); bad != "" {
				return bad, kind
			}
		}
		return "", 0
	}
	return path, t.Kind()
}

// Store replaces the value. It waits only for a Store running in another
// goroutine or process (or, if that writer died, about 10 ms to notice).
func (s *Seqlock[T]) Store(v T) {
	switch err := s.w.lock(context.Background()); err {
	case nil:
	case ErrOwnerDead:
		// The previous writer died mid-Store; this Store rewrites the
		// whole value, which repairs it.
		s.w.consistent()
	default:
		panic(fmt.Sprintf("shm: Seqlock writer word is corrupt (%v); was the memory overwritten?", err))
	}
	seq := atomic.LoadUint32(s.seq)
	if seq&1 == 0 { // odd: a dead writer's Store is still "running"
		seq++
		atomic.StoreUint32(s.seq, seq)
	}
	src := unsafe.Slice((*byte)(unsafe.Pointer(&v)), s.size)
	ne := binary.NativeEndian
	i := 0
	for ; i+8 <= s.size; i += 8 {
		atomic.StoreUint64(&s.data[i/8], ne.Uint64(src[i:]))
	}
	if i < s.size {
		var tail [8]byte
		copy(tail[:], src[i:])
		atomic.StoreUint64(&s.data[i/8], ne.Uint64(tail[:]))
	}
	atomic.StoreUint32(s.seq, seq+1)
	s.w.unlock(false)
}

// Load returns a consistent snapshot of the value. It retries while a Store
// runs; if one Store runs for long (a writer preempted, or dead until the
// next Store), it sleeps in 1 ms futex waits rather than spinning. It waits
// as long as it takes: use LoadContext to bound the wait.
func (s *Seqlock[T]) Load() T {
	v, _ := s.load(context.Background(), false)
	return v
}

// LoadContext is Load with a bound: it returns ctx.Err() if ctx ends first,
// and ErrWriterDead if the writer died in the middle of a Store (the value
// stays inconsistent until the next Store). It checks the writer after the
// same Store has looked unfinished for about 10 ms.
func (s *Seqlock[T]) LoadContext(ctx context.Context) (T, error) {
	return s.load(ctx, true)
}

func (s *Seqlock[T]) load(ctx context.Context, bounded bool) (T, error) {
	var v T
	dst := unsafe.Slice((*byte)(unsafe.Pointer(&v)), s.size)
	ne := binary.NativeEndian
	stuck, lastOdd := 0, uint32(0)
	var since time.Time
	for {
		seq := atomic.LoadUint32(s.seq)
		if seq&1 == 0 {
			i := 0
			for ; i+8 <= s.size; i += 8 {
				ne.PutUint64(dst[i:], atomic.LoadUint64(&s.data[i/8]))
			}
			if i < s.size {
				var tail [8]byte
				ne.PutUint64(tail[:], atomic.LoadUint64(&s.data[i/8]))
				copy(dst[i:], tail[:])
			}
			if atomic.LoadUint32(s.seq) == seq {
				return v, nil
			}
			continue
		}
		// The same Store still running: yield, then sleep if it lasts.
		if seq != lastOdd {
			stuck, lastOdd = 0, seq
		}
		if stuck++; stuck < 100 {
			runtime.Gosched()
			continue
		}
		if bounded {
			if stuck == 100 {
				since = time.Now()
			}
			if err := ctx.Err(); err != nil {
				var zero T
				return zero, err
			}
			if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
				// The deadline passed and its timer has not fired yet
				// (a loaded machine): the caller's bound comes first.
				var zero T
				return zero, context.DeadlineExceeded
			}
			if time.Since(since) >= maxSlice {
				since = time.Now()
				w := atomic.LoadUint64(s.w.p)
				if pid, tag := ownerOf(w); pid != 0 && !alive(pid, tag) && atomic.LoadUint32(s.seq) == seq {
					var zero T
					return zero, ErrWriterDead
				}
			}
		}
		futexWait(s.seq, seq, minSlice)
	}
}
