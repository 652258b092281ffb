package rmi

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
)

// iface describes a registered remote interface.
type iface struct {
	t       reflect.Type
	name    string // package path and name
	methods map[string]*method
	newFn   func(*Delegate) any // wraps a delegate in the typed proxy
}

// Speeds of a method (method.speed).
const (
	speedUnknown = iota
	speedQuick
	speedSlow
)

type method struct {
	name string
	idx  int            // index in the interface's method set
	in   []reflect.Type // parameters after the context
	out  []reflect.Type // results before the error
	// speed is what the last call served of the method says of the next:
	// speedUnknown before any, speedQuick, or speedSlow if it took longer
	// than inlineSlow (not counting its own remote calls) or asked for its
	// context's Done channel. A background reader serves a call inline
	// unless its method is slow; a caller reading for its own reply, only
	// if it is quick (see bgLoop and lead).
	speed atomic.Int32
	stub  stubFn // nil: dispatched by reflection
	// inF and outF cache the remote interfaces of in and out once found
	// (lookupIface: a map read per argument and result). Only found ones:
	// an interface registered later is still looked up.
	inF, outF []atomic.Pointer[iface]
}

// inIface returns lookupIface(md.in[i]), cached.
func (md *method) inIface(i int) *iface { return cachedIface(&md.inF[i], md.in[i]) }

// outIface returns lookupIface(md.out[i]), cached.
func (md *method) outIface(i int) *iface { return cachedIface(&md.outF[i], md.out[i]) }

func cachedIface(c *atomic.Pointer[iface], t reflect.Type) *iface {
	if f := c.Load(); f != nil {
		return f
	}
	f := lookupIface(t)
	if f != nil {
		c.Store(f)
	}
	return f
}

var (
	ctxType = reflect.TypeFor[context.Context]()
	errType = reflect.TypeFor[error]()

	// The registered interfaces: a map replaced (copied) by Register and
	// read without a lock (every argument, result and call looks it up; a
	// read lock is a locked instruction on a cache line shared by all the
	// cores).
	regMu  sync.Mutex // serializes Register
	ifaces atomic.Pointer[map[reflect.Type]*iface]
	// The method names of the registered interfaces, which the decoder
	// of calls returns instead of a copy of the bytes (an allocation per
	// call). Replaced like ifaces.
	methodNames atomic.Pointer[map[string]string]
)

// Register declares the Go interface T remote. newProxy wraps a delegate
// in a value implementing T whose methods call the delegate
// (cmd/loft-rmigen writes it and this call; see doc.go). Every method of T must take a context.Context
// first and return an error last; other parameters and results are
// encoded with CBOR, except those whose type is a registered remote
// interface, which travel by reference. Register in an init function, in
// every process that uses T. Stubs, if given, dispatch incoming calls of
// the methods they name without reflection (see Stubs).
func Register[T any](newProxy func(*Delegate) T, stubs ...Stubs[T]) {
	t := reflect.TypeFor[T]()
	if t.Kind() != reflect.Interface {
		panic(fmt.Sprintf("rmi.Register: %v is not an interface", t))
	}
	f := &iface{t: t, name: t.PkgPath() + "." + t.Name(), methods: map[string]*method{},
		newFn: func(d *Delegate) any { return newProxy(d) }}
	for i := range t.NumMethod() {
		m := t.Method(i)
		ft := m.Type
		if ft.NumIn() < 1 || ft.In(0) != ctxType || ft.NumOut() < 1 || ft.Out(ft.NumOut()-1) != errType || ft.IsVariadic() {
			panic(fmt.Sprintf("rmi.Register: %v.%s must be func(context.Context, ...) (..., error)", t, m.Name))
		}
		md := &method{name: m.Name, idx: i}
		for j := 1; j < ft.NumIn(); j++ {
			md.in = append(md.in, ft.In(j))
		}
		for j := 0; j < ft.NumOut()-1; j++ {
			md.out = append(md.out, ft.Out(j))
		}
		md.inF = make([]atomic.Pointer[iface], len(md.in))
		md.outF = make([]atomic.Pointer[iface], len(md.out))
		f.methods[m.Name] = md
	}
	for _, st := range stubs {
		for name, fn := range st {
			md := f.methods[name]
			if md == nil {
				panic(fmt.Sprintf("rmi.Register: a stub for %s, which %v does not have", name, t))
			}
			md.stub = func(ctx context.Context, obj any, c *Served) error {
				x, _ := obj.(T)
				return fn(ctx, x, c)
			}
		}
	}
	regMu.Lock()
	m := map[reflect.Type]*iface{t: f}
	if old := ifaces.Load(); old != nil {
		for k, v := range *old {
			if k != t {
				m[k] = v
			}
		}
	}
	ifaces.Store(&m)
	names := map[string]string{}
	if old := methodNames.Load(); old != nil {
		for k, v := range *old {
			names[k] = v
		}
	}
	for name := range f.methods {
		names[name] = name
	}
	methodNames.Store(&names)
	regMu.Unlock()
}

func lookupIface(t reflect.Type) *iface {
	if t.Kind() != reflect.Interface {
		return nil
	}
	m := ifaces.Load()
	if m == nil {
		return nil
	}
	return (*m)[t]
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

// methodItem is textItem for a method name: a registered one is returned
// without a copy.
func methodItem(b []byte) (string, []byte, bool) {
	if major, n, r, ok := head(b); ok && major == cbText && n <= uint64(len(r)) {
		if names := methodNames.Load(); names != nil {
			if s, ok := (*names)[string(r[:n])]; ok {
				return s, r[n:], true
			}
		}
	}
	return textItem(b)
}
