package loft

import (
	"errors"
	"fmt"
)

// Errors a caller can match with errors.Is. Errors returned by loft wrap
// these with detail (which channel, which peer, what to do).
var (
	// ErrPeerGone means every receiver of a channel (or the node addressed)
	// went away: like EPIPE on a pipe whose reader closed.
	ErrPeerGone = errors.New("loft: peer gone")
	// ErrFull is returned by TrySend, and by Send on a channel whose policy
	// is FailWhenFull, when no receiver has room.
	ErrFull = errors.New("loft: channel full")
	// ErrTooLarge means a message is larger than the channel's MaxMessageSize.
	ErrTooLarge = errors.New("loft: message too large")
	// ErrClosed means the sender, receiver or node was closed.
	ErrClosed = errors.New("loft: closed")
	// ErrEmpty is returned by TryRecv when no message is waiting.
	ErrEmpty = errors.New("loft: no message waiting")
	// ErrRefused means a peer refused an attach (for example no such channel,
	// or a kind mismatch: sending on a topic's name as if it were a channel).
	ErrRefused = errors.New("loft: refused by peer")
	// ErrProtocol means a peer broke the protocol (bad frame, credit overrun);
	// only that connection is closed.
	ErrProtocol = errors.New("loft: protocol violation")
	// ErrUnsupported means the operation needs something the transport lacks,
	// such as passing files over TCP.
	ErrUnsupported = errors.New("loft: not supported on this transport")
	// ErrBadAddress means an address could not be parsed.
	ErrBadAddress = errors.New("loft: bad address")
)

// OpError tells which operation on which name failed and why. Unwrap gives
// the cause, so errors.Is(err, ErrPeerGone) works through it.
type OpError struct {
	Op   string // "send", "recv", "attach", "dial", ...
	Name string // channel, topic or node name
	Err  error
}

// Error describes the failed operation and its cause.
func (e *OpError) Error() string {
	return fmt.Sprintf("loft: %s %q: %v", e.Op, e.Name, e.Err)
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }
