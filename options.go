package loft

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// Delivery is a channel's delivery guarantee.
type Delivery uint8

const (
	// AtLeastOnce (the default) keeps each message on the sending side until
	// a receiver has taken it, and sends it again after a reconnect or to
	// another receiver when the one holding it dies. A receiver may see a
	// message twice after a failure.
	AtLeastOnce Delivery = iota
	// AtMostOnce sends each message once; messages in flight when a receiver
	// dies are lost, and the sender counts them (SenderStats.Lost).
	AtMostOnce
	// ExactlyOnce is AtLeastOnce plus de-duplication by sender and sequence
	// number on the receiving node.
	ExactlyOnce
)

// String names the guarantee.
func (d Delivery) String() string {
	switch d {
	case AtLeastOnce:
		return "at-least-once"
	case AtMostOnce:
		return "at-most-once"
	case ExactlyOnce:
		return "exactly-once"
	}
	return "unknown"
}

// FullPolicy says what Send does when no receiver has room.
type FullPolicy uint8

const (
	// Block (the default) makes Send wait for room.
	Block FullPolicy = iota
	// FailWhenFull makes Send return ErrFull at once.
	FailWhenFull
	// DropOldest makes room by dropping the oldest message queued at the
	// receiver. Every drop is counted (ReceiverStats.Dropped).
	DropOldest
)

// String names the policy.
func (p FullPolicy) String() string {
	switch p {
	case Block:
		return "block"
	case FailWhenFull:
		return "fail"
	case DropOldest:
		return "drop-oldest"
	}
	return "unknown"
}

// DefaultMaxMessageSize is the message size limit of a channel whose
// MaxMessageSize is zero.
const DefaultMaxMessageSize = 16 << 20

// ChannelOptions are a channel's semantics. The receivers of a channel set
// them; senders learn them when they attach. The zero value is a
// synchronous, blocking, at-least-once channel with a 16 MiB message limit.
type ChannelOptions struct {
	// Capacity is how many messages a receiver buffers. Zero means
	// synchronous: Send returns once a receiver has taken the message.
	Capacity int
	// OnFull is what Send does when the receivers are full. Zero: Block.
	OnFull FullPolicy
	// Delivery is the delivery guarantee. Zero: AtLeastOnce.
	Delivery Delivery
	// MaxMessageSize is the largest message accepted, enforced by senders
	// and receivers. Zero: DefaultMaxMessageSize.
	MaxMessageSize int
}

func (o ChannelOptions) normalized() ChannelOptions {
	if o.Capacity < 0 {
		o.Capacity = 0
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	return o
}

// Options configure a Node. The zero value works: a random node id, the
// per-user runtime directory, a Unix socket, no TCP.
type Options struct {
	// ID names the node. Zero: a random id. Letters, digits, '.', '_' and
	// '-' only, at most 64 bytes.
	ID string
	// Dir is the runtime directory of the name service. Zero: the
	// per-user default ($LOFT_RUNTIME_DIR, $XDG_RUNTIME_DIR/loft, or
	// /tmp/loft-UID), created with mode 0700.
	Dir string
	// ListenTCP, when set, also listens on this TCP address (host:port;
	// port 0 picks one). Zero: no TCP listener.
	ListenTCP string
	// TLS, when set, is used for TCP: as the server configuration of the
	// listener and the client configuration of dials.
	TLS *tls.Config
	// AllowUIDs lists other users whose Unix-socket peers are accepted.
	// Zero: same user only (checked with SO_PEERCRED).
	AllowUIDs []uint32
	// HeartbeatInterval is how often an idle TCP connection sends a ping.
	// Zero: 1 s.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long a TCP connection may stay silent
	// before the peer is declared gone. Zero: 5 s.
	HeartbeatTimeout time.Duration
	// NoSharedMemory turns the shared-memory transport off: peers on this
	// host are then reached over the Unix socket. Zero: shared memory is
	// used for every peer on this host.
	NoSharedMemory bool
	// NoInProcess stops this node from reaching nodes of its own process
	// through an in-process socket pair; it then uses shared memory (or the
	// Unix socket) as for any process. Zero: in-process pairs are used.
	NoInProcess bool
	// BusyPoll makes shared-memory connections poll rather than park when
	// idle, for the lowest latency at the cost of a busy core per waiting
	// side. Zero: a short adaptive spin, then park.
	BusyPoll bool
	// LoanPoolSize is the size of the shared-memory pool each connection
	// gets for loans (Sender.Loan), rounded up to 64 KiB. Zero: 64 MiB.
	// The memory is only touched as loans use it.
	LoanPoolSize int
	// MaxFrameSize bounds one incoming frame. Zero: 16 MiB plus headers.
	MaxFrameSize int
	// Logger receives structured logs. Zero: slog.Default() with a "loft"
	// group; logs are at debug level except for protocol violations.
	Logger *slog.Logger
}
