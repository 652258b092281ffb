package rmi

import (
	"errors"
	"fmt"

	"github.com/loft-ipc/loft"
)

// Errors a caller can match with errors.Is. They cross the wire: an error
// a peer's runtime raised (not one returned by application code) arrives
// as a *RemoteError whose Is matches the same sentinel.
var (
	// ErrNoSuchObject: the reference names no object exported to this
	// connection (forged, already released, or never given).
	ErrNoSuchObject = errors.New("rmi: no such object on this connection")
	// ErrForeignRef: the reference is one this endpoint gave to another
	// peer; references are valid only on the connection they were given on.
	ErrForeignRef = errors.New("rmi: reference belongs to another connection")
	// ErrNoSuchMethod: the target's interface has no such method.
	ErrNoSuchMethod = errors.New("rmi: no such method")
	// ErrReleased: the delegate was released (or was borrowed for a call
	// that has ended and was not retained).
	ErrReleased = errors.New("rmi: delegate released")
	// ErrTooManyCalls: the peer already runs its limit of incoming calls
	// from this connection (Options.MaxIncoming).
	ErrTooManyCalls = errors.New("rmi: too many calls in flight")
	// ErrBadMessage: a message or an argument could not be decoded.
	ErrBadMessage = errors.New("rmi: bad message")
	// ErrNotFound: no object is published under the name asked by Lookup.
	ErrNotFound = errors.New("rmi: no object published under that name")
	// ErrClosed: the endpoint was closed.
	ErrClosed = errors.New("rmi: endpoint closed")
	// ErrPeerGone is loft.ErrPeerGone: the peer holding the object died or
	// closed. Calls on its delegates fail at once with an error matching it.
	ErrPeerGone = loft.ErrPeerGone
)

var codes = map[string]error{
	"no-such-object": ErrNoSuchObject,
	"foreign-ref":    ErrForeignRef,
	"no-such-method": ErrNoSuchMethod,
	"released":       ErrReleased,
	"too-many-calls": ErrTooManyCalls,
	"bad-message":    ErrBadMessage,
	"not-found":      ErrNotFound,
	"closed":         ErrClosed,
	"peer-gone":      ErrPeerGone,
}

func codeOf(err error) string {
	for c, e := range codes {
		if errors.Is(err, e) {
			return c
		}
	}
	return ""
}

// RemoteError is an error returned by a call that failed in the peer: the
// method returned an error, panicked, or the peer's runtime refused the
// call. Code is set when the peer's runtime raised one of this package's
// sentinel errors; errors.Is(err, ErrForeignRef) and the like then match.
type RemoteError struct {
	Peer   string // node id of the peer
	Method string
	Code   string
	Msg    string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("rmi: %s on %s: %s", e.Method, e.Peer, e.Msg)
}

// Is matches the sentinel named by Code.
func (e *RemoteError) Is(target error) bool {
	s, ok := codes[e.Code]
	return ok && s == target
}

// CallError is a call that failed on this side: the peer is gone, the
// context ended, the delegate was released.
type CallError struct {
	Peer   string
	Method string
	Err    error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("rmi: %s on %s: %v", e.Method, e.Peer, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }
