package rmi

import (
	"context"
	"fmt"
	"reflect"
)

// Ref is a reference to a remote object in a form that travels inside any
// message: an argument or result of an rpc call, a loft message, a field
// of a struct. Remote-object calls pass references by themselves; a Ref is
// for everything else.
//
// The home of the object makes one with ExportRef for the node that will
// use it; that node turns it into a delegate with ImportRef:
//
//	// P, calling an rpc service on node Q with a listener of its own:
//	ref, _ := rmi.ExportRef[Listener](ep, q, myListener)
//	rpc.Call[RunReq, RunResp](ctx, cli, "Run", RunReq{Steps: 5, Progress: ref})
//
//	// Q, in the handler:
//	l, err := rmi.ImportRef[Listener](ep, req.Progress)
//	defer rmi.Release(l)
//
// A Ref is a capability like any reference: it is valid only for the node
// it was exported to (calls from another node are refused with
// ErrForeignRef), and its id is 128 random bits. ExportRef gives that node
// one reference, which the delegate of ImportRef owns: import a Ref once,
// and Release the delegate. A Ref never imported is dropped when that
// node goes (or the endpoint closes). rpc and rmi must use the same loft
// node on each side: references are scoped to a pair of nodes.
type Ref struct {
	Home  string `cbor:"1,keyasint" json:"home"`  // the node the object lives in
	ID    []byte `cbor:"2,keyasint" json:"id"`    // its id there, for the node it was exported to
	Iface string `cbor:"3,keyasint" json:"iface"` // the remote interface, package path and name
}

// ExportRef exports obj, of the registered remote interface T, to node
// to, and returns the Ref that node can import. obj must be an object of
// this node (not a delegate: a Ref does not forward).
func ExportRef[T any](ep *Endpoint, to string, obj T) (Ref, error) {
	f := lookupIface(reflect.TypeFor[T]())
	if f == nil {
		return Ref{}, fmt.Errorf("rmi: ExportRef: %v is not a registered remote interface", reflect.TypeFor[T]())
	}
	if DelegateOf(obj) != nil {
		return Ref{}, fmt.Errorf("rmi: ExportRef: %v is a delegate; only objects of this node can be exported (pass the delegate in a remote-object call instead, which forwards it)", reflect.TypeOf(obj))
	}
	if any(obj) == nil {
		return Ref{}, fmt.Errorf("rmi: ExportRef: nil %v", f.t)
	}
	if to == ep.node.ID() {
		return Ref{}, fmt.Errorf("rmi: ExportRef: node %s is this endpoint's own node", to)
	}
	p, err := ep.peer(to)
	if err != nil {
		return Ref{}, err
	}
	_, e, err := ep.encodeRef(context.Background(), p, nil, obj, f)
	if err != nil {
		return Ref{}, err
	}
	ep.ensureReader() // calls on the export may come in before any other traffic
	return Ref{Home: ep.node.ID(), ID: append([]byte(nil), e.id[:]...), Iface: f.name}, nil
}

// ImportRef returns a delegate, of the remote interface T, of the object
// ref names in another node. The delegate owns the reference ExportRef
// gave: Release it. A Ref of another interface, of this node's own object,
// or malformed is refused with an error; one that was not exported to
// this node is refused by its home when the delegate is called
// (ErrForeignRef or ErrNoSuchObject).
func ImportRef[T any](ep *Endpoint, ref Ref) (T, error) {
	var zero T
	f := lookupIface(reflect.TypeFor[T]())
	if f == nil {
		return zero, fmt.Errorf("rmi: ImportRef: %v is not a registered remote interface", reflect.TypeFor[T]())
	}
	switch {
	case len(ref.ID) != idLen || ref.Home == "":
		return zero, fmt.Errorf("%w: a Ref needs a home node and a %d-byte id", ErrBadMessage, idLen)
	case ref.Iface != f.name:
		return zero, fmt.Errorf("%w: the Ref is a %s, not a %s", ErrBadMessage, ref.Iface, f.name)
	case ref.Home == ep.node.ID():
		return zero, fmt.Errorf("%w: the Ref names an object of this node (use the object itself; a Ref is for another node)", ErrForeignRef)
	}
	p, err := ep.peer(ref.Home)
	if err != nil {
		return zero, err
	}
	if err := p.deadErr(); err != nil {
		return zero, err
	}
	d := newDelegate(ep, p, f, objID(ref.ID), false)
	r, _ := f.newFn(d).(T)
	return r, nil
}
