package rmi

import (
	"context"
	"fmt"
	"reflect"
	"sync"
)

// Stubs dispatch incoming calls to an object of remote interface T
// without reflection: one function per method name, which decodes the
// arguments with Arg (in order), calls the method on obj with ctx, and
// encodes its results with Result (in order) unless it failed, returning
// the method's error. cmd/loft-rmigen writes them and passes them to
// Register; an interface registered without stubs (or a method without
// one) is dispatched by reflection, with the same result.
type Stubs[T any] map[string]func(ctx context.Context, obj T, c *Served) error

// stubFn is a stub with its object as an any (Register wraps it).
type stubFn func(ctx context.Context, obj any, c *Served) error

// Served is an incoming call being dispatched by a stub (see Stubs). It is
// valid only while the stub runs: once the call's reply is encoded, it is
// recycled for another call.
type Served struct {
	cc     *callCtx // the context the method runs in: its own allocation, as a method may keep it
	ep     *Endpoint
	p      *peer
	m      *wmsg
	it     argIter
	md     *method
	ar     []byte      // the results, encoded (wmsg.ar of the reply)
	an     int         // how many
	resExp *export     // the object exported by the first result that is one
	lent   []*Delegate // per argument decoded (so far): its delegate if it is a reference
	lentA  [4]*Delegate
	buf    [64]byte // first buffer of ar
}

// A served call's state and result buffers are recycled (servedPool): a
// chain of calls allocated one per call, the largest allocation of
// serving, and with the rest made the collector run often enough to slow
// every call down. The context is not: a method may keep it.
var servedPool = sync.Pool{New: func() any { return new(Served) }}

// newServed returns a cleared Served with a fresh context.
func newServed() *Served {
	c := servedPool.Get().(*Served)
	c.cc = new(callCtx)
	return c
}

// freeServed recycles c (nil: none) once nothing refers to it: its call
// ended and its reply was encoded.
func freeServed(c *Served) {
	if c == nil {
		return
	}
	*c = Served{}
	servedPool.Put(c)
}

// Arg decodes the next argument of call c as a T: a remote interface
// (received by reference, lent for the call) or a CBOR value. Stubs call
// it once per parameter, in order.
func Arg[T any](c *Served) (T, error) {
	var v T
	i := len(c.lent)
	raw := c.it.next()
	if raw == nil {
		return v, fmt.Errorf("%w: %s has no argument %d", ErrBadMessage, c.m.M, i+1)
	}
	if f := c.iface(false, i, reflect.TypeFor[T]()); f != nil {
		obj, d, err := c.ep.decodeRef(c.p, raw, f, true)
		c.lent = append(c.lent, d)
		if err != nil {
			return v, err
		}
		v, _ = obj.(T)
		return v, nil
	}
	c.lent = append(c.lent, nil)
	if err := unmarshalInto(raw, &v); err != nil {
		return v, fmt.Errorf("%w: argument %d of %s: %v", ErrBadMessage, i+1, c.m.M, err)
	}
	return v, nil
}

// Result encodes v as the next result of call c: by reference if T is a
// remote interface, else in CBOR. Stubs call it once per result (but the
// error), in order, when the method succeeded.
func Result[T any](c *Served, v T) error {
	if f := c.iface(true, c.an, reflect.TypeFor[T]()); f != nil {
		return c.refResult(any(v), f)
	}
	var err error
	switch x := any(&v).(type) {
	case *string:
		c.ar, err = appendString(c.ar, *x)
	case *int:
		c.ar = appendInt(c.ar, int64(*x))
	default:
		c.ar, err = appendValue(c.ar, any(v))
	}
	if err != nil {
		return fmt.Errorf("rmi: encoding result %d of %s: %v", c.an+1, c.m.M, err)
	}
	c.an++
	return nil
}

// iface returns lookupIface(t) for parameter i of the method (result i
// if out), cached when t is its declared type.
func (c *Served) iface(out bool, i int, t reflect.Type) *iface {
	if md := c.md; md != nil {
		ts, fs := md.in, md.inF
		if out {
			ts, fs = md.out, md.outF
		}
		if i < len(ts) && ts[i] == t {
			return cachedIface(&fs[i], t)
		}
	}
	return lookupIface(t)
}

// refResult encodes obj, of remote interface f, as the next result.
func (c *Served) refResult(obj any, f *iface) error {
	var e *export
	var err error
	c.ar, e, err = c.ep.encodeRef(c.cc, c.p, c.ar, obj, f)
	if err != nil {
		return err
	}
	if c.resExp == nil {
		c.resExp = e
	}
	c.an++
	return nil
}

// callStub runs a stub, turning a panic into an error.
func callStub(fn stubFn, ctx context.Context, obj any, c *Served) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rmi: method panicked: %v", r)
		}
	}()
	return fn(ctx, obj, c)
}

// callReflect serves call c on ex by reflection: the arguments decoded,
// the method called, the results encoded, as a stub does.
func (ep *Endpoint) callReflect(c *Served, ex *export, md *method) error {
	in := make([]reflect.Value, 1+len(md.in))
	var ctx context.Context = c.cc
	in[0] = reflect.ValueOf(&ctx).Elem() // (typed context.Context: Call walks no method set)
	for i, t := range md.in {
		raw := c.it.next()
		if f := md.inIface(i); f != nil {
			obj, d, err := ep.decodeRef(c.p, raw, f, true)
			if err != nil {
				return err
			}
			c.lent = append(c.lent, d)
			in[i+1] = ifaceValue(t, obj)
			continue
		}
		c.lent = append(c.lent, nil)
		v := reflect.New(t)
		if err := unmarshalValue(raw, v.Interface()); err != nil {
			return fmt.Errorf("%w: argument %d of %s: %v", ErrBadMessage, i+1, c.m.M, err)
		}
		in[i+1] = v.Elem()
	}
	res, err := call(ex.value().Method(md.idx), in)
	if err != nil {
		return err
	}
	if e := res[len(res)-1]; !e.IsNil() {
		return e.Interface().(error)
	}
	for i := range md.out {
		if f := md.outIface(i); f != nil {
			if err := c.refResult(res[i].Interface(), f); err != nil {
				return err
			}
			continue
		}
		if c.ar, err = appendValue(c.ar, res[i].Interface()); err != nil {
			return fmt.Errorf("rmi: encoding result %d of %s: %v", i+1, c.m.M, err)
		}
		c.an++
	}
	return nil
}
