// Package transport opens the byte streams loft's nodes talk over: Unix
// domain sockets (with the peer's credentials checked), TCP (optionally with
// TLS), and in-process pairs. Every stream is a net.Conn and every acceptor a
// net.Listener, so anything that runs on the standard interfaces runs here.
//
// Addresses are URLs: shm:///path/to/node.shm (shared memory, rendezvous
// on that Unix socket), unix:///path/to/node.sock, tcp://host:port and
// inproc://name. A transport for another scheme (the shared-memory transport)
// is added by registering it with Register.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"

	"github.com/loft-ipc/loft/transport/shmconn"
	"golang.org/x/sys/unix"
)

// Errors a caller can match with errors.Is.
var (
	ErrScheme   = errors.New("transport: unknown address scheme")
	ErrPeerUser = errors.New("transport: peer runs as another user")
)

// Config holds what a transport needs besides the address. The zero value
// is valid: no TLS, only peers of the same user on Unix sockets.
type Config struct {
	// TLS, when non-nil, wraps TCP connections: a listener uses it as a
	// server configuration, a dialer as a client configuration.
	TLS *tls.Config
	// AllowUIDs lists other user ids whose Unix-socket peers are accepted.
	// Zero value: only the process's own user (and root, which can bypass
	// file permissions anyway) is accepted.
	AllowUIDs []uint32
	// BusyPoll makes shared-memory connections poll instead of parking
	// when idle: the lowest latency for a core per waiting side.
	BusyPoll bool
}

// Transport opens listeners and connections for one URL scheme. Implementations
// MUST return connections whose Close unblocks pending Read and Write calls.
type Transport interface {
	Listen(ctx context.Context, u *url.URL, cfg *Config) (net.Listener, error)
	Dial(ctx context.Context, u *url.URL, cfg *Config) (net.Conn, error)
}

var (
	regMu      sync.RWMutex
	transports = map[string]Transport{
		"unix":   unixTransport{},
		"tcp":    tcpTransport{},
		"inproc": inprocTransport{},
		"shm":    shmTransport{},
	}
)

// Register adds or replaces the transport for a URL scheme.
func Register(scheme string, t Transport) {
	regMu.Lock()
	defer regMu.Unlock()
	transports[scheme] = t
}

func lookup(u *url.URL) (Transport, error) {
	regMu.RLock()
	defer regMu.RUnlock()
	t, ok := transports[u.Scheme]
	if !ok {
		return nil, fmt.Errorf("%w %q in %s", ErrScheme, u.Scheme, u.Redacted())
	}
	return t, nil
}

// Listen listens on the address u.
func Listen(ctx context.Context, u *url.URL, cfg *Config) (net.Listener, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	t, err := lookup(u)
	if err != nil {
		return nil, err
	}
	return t.Listen(ctx, u, cfg)
}

// Dial connects to the address u.
func Dial(ctx context.Context, u *url.URL, cfg *Config) (net.Conn, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	t, err := lookup(u)
	if err != nil {
		return nil, err
	}
	return t.Dial(ctx, u, cfg)
}

type unixTransport struct{}

func (unixTransport) Listen(ctx context.Context, u *url.URL, cfg *Config) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", u.Path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(u.Path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return &credListener{Listener: l, allow: cfg.AllowUIDs}, nil
}

func (unixTransport) Dial(ctx context.Context, u *url.URL, cfg *Config) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", u.Path)
	if err != nil {
		return nil, err
	}
	if err := checkPeer(c, cfg.AllowUIDs); err != nil {
		c.Close()
		return nil, err
	}
	sockBuf(c)
	return c, nil
}

// unixSendBuffer is the send buffer asked for on Unix-socket connections
// (Linux doubles it; the default is 208 KiB, net.core.wmem_default). On a
// Unix stream socket the sender's buffer bounds what waits in the
// receiver's queue, so with the default a sender that writes bundles of
// 100 KiB or more stalls (EAGAIN, then a wake-up when the reader has
// drained enough) whenever the reader is a little behind, and the two
// sides take turns instead of running at once. Alternating runs of a
// two-process program sending 10 M messages of 64 B (medians of 8):
// 10.2 M msg/s with the default, 11.5 M with 512 KiB or 1 MiB asked for.
const unixSendBuffer = 512 << 10

// sockBuf sets a Unix-socket connection's send buffer (unixSendBuffer).
// An error leaves the default, which works, only slower.
func sockBuf(c net.Conn) {
	if uc, ok := c.(*net.UnixConn); ok {
		uc.SetWriteBuffer(unixSendBuffer)
	}
}

// credListener refuses Unix-socket peers of another user (SO_PEERCRED).
type credListener struct {
	net.Listener
	allow []uint32
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := checkPeer(c, l.allow); err != nil {
			c.Close()
			continue
		}
		sockBuf(c)
		return c, nil
	}
}

// PeerCred returns the credentials of the process at the other end of a Unix
// socket connection.
func PeerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("transport: %T is not a Unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return nil, err
	}
	return cred, cerr
}

func checkPeer(c net.Conn, allow []uint32) error {
	cred, err := PeerCred(c)
	if err != nil {
		return err
	}
	return checkCred(cred, allow)
}

func checkCred(cred *unix.Ucred, allow []uint32) error {
	me := uint32(os.Geteuid())
	if cred.Uid == me || cred.Uid == 0 {
		return nil
	}
	for _, a := range allow {
		if a == cred.Uid {
			return nil
		}
	}
	return fmt.Errorf("%w: pid %d uid %d (this process is uid %d; list the uid in AllowUIDs to accept it)", ErrPeerUser, cred.Pid, cred.Uid, me)
}

// shmTransport carries bytes through shared-memory rings; the Unix socket
// at the URL's path is used for the rendezvous and wake-ups only.
type shmTransport struct{}

func (shmTransport) Listen(ctx context.Context, u *url.URL, cfg *Config) (net.Listener, error) {
	l, err := shmconn.Listen(ctx, u.Path, &shmconn.Config{BusyPoll: cfg.BusyPoll})
	if err != nil {
		return nil, err
	}
	allow := cfg.AllowUIDs
	l.Check = func(c *net.UnixConn) error { return checkPeer(c, allow) }
	return l, nil
}

func (shmTransport) Dial(ctx context.Context, u *url.URL, cfg *Config) (net.Conn, error) {
	c, err := shmconn.Dial(ctx, u.Path, &shmconn.Config{BusyPoll: cfg.BusyPoll})
	if err != nil {
		return nil, err
	}
	cred, err := c.PeerCred()
	if err == nil {
		err = checkCred(cred, cfg.AllowUIDs)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

type tcpTransport struct{}

func (tcpTransport) Listen(ctx context.Context, u *url.URL, cfg *Config) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		return tls.NewListener(l, cfg.TLS), nil
	}
	return l, nil
}

func (tcpTransport) Dial(ctx context.Context, u *url.URL, cfg *Config) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if cfg.TLS != nil {
		tcfg := cfg.TLS.Clone()
		if tcfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(u.Host)
			tcfg.ServerName = host
		}
		tc := tls.Client(c, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	return c, nil
}
