package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNoListener is returned when dialling an in-process name nobody listens on.
var ErrNoListener = errors.New("transport: no in-process listener")

// The in-process transport pairs connections through a kernel socket pair
// created in this process: no file name, no port, full net.Conn semantics
// (deadlines, Close unblocking Read and Write).
type inprocTransport struct{}

var (
	inprocMu  sync.Mutex
	inprocLns = map[string]*inprocListener{}
)

type inprocListener struct {
	name   string
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
}

type inprocAddr string

func (a inprocAddr) Network() string { return "inproc" }
func (a inprocAddr) String() string  { return "inproc://" + string(a) }

func (inprocTransport) Listen(_ context.Context, u *url.URL, _ *Config) (net.Listener, error) {
	name := u.Host + u.Path
	inprocMu.Lock()
	defer inprocMu.Unlock()
	if _, ok := inprocLns[name]; ok {
		return nil, fmt.Errorf("transport: inproc://%s: address in use", name)
	}
	l := &inprocListener{name: name, conns: make(chan net.Conn), done: make(chan struct{})}
	inprocLns[name] = l
	return l, nil
}

func (inprocTransport) Dial(ctx context.Context, u *url.URL, _ *Config) (net.Conn, error) {
	name := u.Host + u.Path
	inprocMu.Lock()
	l := inprocLns[name]
	inprocMu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("%w at inproc://%s", ErrNoListener, name)
	}
	a, b, err := socketPair()
	if err != nil {
		return nil, err
	}
	select {
	case l.conns <- b:
		return a, nil
	case <-l.done:
	case <-ctx.Done():
		a.Close()
		b.Close()
		return nil, ctx.Err()
	}
	a.Close()
	b.Close()
	return nil, fmt.Errorf("%w at inproc://%s", ErrNoListener, name)
}

func socketPair() (net.Conn, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "inproc")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 1 {
				conns[0].Close()
			} else {
				unix.Close(fds[1])
			}
			return nil, nil, err
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

func (l *inprocListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *inprocListener) Close() error {
	l.closed.Do(func() {
		close(l.done)
		inprocMu.Lock()
		delete(inprocLns, l.name)
		inprocMu.Unlock()
	})
	return nil
}

func (l *inprocListener) Addr() net.Addr { return inprocAddr(l.name) }
