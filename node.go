package loft

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/loft-ipc/loft/names"
	"github.com/loft-ipc/loft/transport"
	"github.com/loft-ipc/loft/wire"
)

// Node is a process's endpoint: it has an identity, an inbox, and the
// channels, topics and senders the process opened. It listens on a Unix
// socket in the runtime directory (and on TCP if asked) and registers its
// names in the embedded name service, so other processes find it by name
// with nothing else running. A Node is safe for concurrent use.
type Node struct {
	id    string
	opts  Options
	log   *slog.Logger
	reg   *names.Registry
	lease *names.Lease
	tcfg  *transport.Config

	hbInterval time.Duration
	hbTimeout  time.Duration
	maxFrame   int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	lns       []net.Listener
	addrs     []string
	conns     map[*conn]struct{}
	dialed    map[string]*conn     // by address key: node id or explicit URL
	dialing   map[string]*dialCall // dials in progress, by address key
	connEv    chan struct{}        // closed and replaced when a conn is admitted
	receivers map[string]*Receiver
	senders   map[*Sender]struct{}
	inboxTo   map[string]*Sender
	inbox     *Receiver
	disc      chan struct{}
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Open starts a node. The node listens and registers itself before Open
// returns; Close releases everything it holds.
func Open(ctx context.Context, opts Options) (*Node, error) {
	if opts.ID == "" {
		var b [6]byte
		rand.Read(b[:])
		opts.ID = fmt.Sprintf("n%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	}
	if !idRE.MatchString(opts.ID) {
		return nil, fmt.Errorf("%w: node id %q: use letters, digits, '.', '_' and '-', at most 64", ErrBadAddress, opts.ID)
	}
	n := &Node{
		id:         opts.ID,
		opts:       opts,
		log:        opts.Logger,
		tcfg:       &transport.Config{TLS: opts.TLS, AllowUIDs: opts.AllowUIDs, BusyPoll: opts.BusyPoll},
		hbInterval: opts.HeartbeatInterval,
		hbTimeout:  opts.HeartbeatTimeout,
		maxFrame:   opts.MaxFrameSize,
		conns:      map[*conn]struct{}{},
		dialed:     map[string]*conn{},
		dialing:    map[string]*dialCall{},
		connEv:     make(chan struct{}),
		receivers:  map[string]*Receiver{},
		senders:    map[*Sender]struct{}{},
		inboxTo:    map[string]*Sender{},
		disc:       make(chan struct{}, 1),
	}
	if n.log == nil {
		n.log = slog.Default().With("lib", "loft")
	}
	n.log = n.log.With("node", n.id)
	if n.hbInterval <= 0 {
		n.hbInterval = time.Second
	}
	if n.hbTimeout <= 0 {
		n.hbTimeout = 5 * time.Second
	}
	if n.maxFrame <= 0 {
		n.maxFrame = wire.DefaultMaxFrame
	}
	reg, err := names.Open(opts.Dir)
	if err != nil {
		return nil, err
	}
	n.reg = reg
	n.ctx, n.cancel = context.WithCancel(context.Background())

	sockDir := filepath.Join(reg.Dir(), "sock")
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return nil, err
	}
	sweepSockets(reg, sockDir)
	if !opts.NoSharedMemory {
		shm := filepath.Join(sockDir, n.id+".shm")
		os.Remove(shm)
		if err := n.listen(ctx, &url.URL{Scheme: "shm", Path: shm}); err != nil {
			n.Close()
			return nil, err
		}
	}
	sock := filepath.Join(sockDir, n.id+".sock")
	os.Remove(sock) // a previous node of this id died; its lease is gone or Register fails below
	if err := n.listen(ctx, &url.URL{Scheme: "unix", Path: sock}); err != nil {
		n.Close()
		return nil, err
	}
	if err := n.listen(ctx, &url.URL{Scheme: "inproc", Host: n.id}); err != nil {
		n.Close()
		return nil, err
	}
	if opts.ListenTCP != "" {
		if err := n.listen(ctx, &url.URL{Scheme: "tcp", Host: opts.ListenTCP}); err != nil {
			n.Close()
			return nil, err
		}
	}
	host, _ := os.Hostname()
	lease, err := reg.Register(names.NodeInfo{ID: n.id, PID: os.Getpid(), Host: host, Addrs: n.addrs, Started: time.Now()})
	if err != nil {
		n.Close()
		return nil, err
	}
	n.lease = lease
	n.inbox = newReceiver(n, kindInbox, n.id, ChannelOptions{Capacity: 1024})
	if err := n.addReceiver(n.inbox); err != nil {
		n.Close()
		return nil, err
	}
	n.wg.Add(1)
	go n.discoveryLoop()
	return n, nil
}

// ID returns the node's id.
func (n *Node) ID() string { return n.id }

// Addrs returns the URLs the node listens on.
func (n *Node) Addrs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.addrs...)
}

// Inbox returns the receiver of messages sent to this node with SendTo.
func (n *Node) Inbox() *Receiver { return n.inbox }

func (n *Node) listen(ctx context.Context, u *url.URL) error {
	l, err := transport.Listen(ctx, u, n.tcfg)
	if err != nil {
		return fmt.Errorf("loft: listen on %s: %w", u, err)
	}
	addr := u.String()
	if u.Scheme == "tcp" {
		addr = "tcp://" + l.Addr().String()
	}
	n.mu.Lock()
	n.lns = append(n.lns, l)
	n.addrs = append(n.addrs, addr)
	n.mu.Unlock()
	n.wg.Add(1)
	go n.acceptLoop(l)
	return nil
}

func (n *Node) acceptLoop(l net.Listener) {
	defer n.wg.Done()
	for {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			c := newConn(n, nc, false)
			// The handshake admits the conn (see admit) before it answers.
			if err := c.handshake(n.ctx); err != nil {
				n.log.Debug("handshake failed", "remote", nc.RemoteAddr(), "err", err)
				nc.Close()
				return
			}
			c.start()
		}()
	}
}

// Outcomes of admit.
const (
	admitOK = iota
	admitDecline
	admitClosed
)

// admit registers an accepted conn before it starts, or declines it. The
// conn is reused for traffic towards the dialler too: two nodes talk over
// one conn. When both dial each other at once, the conn dialled by the
// node with the smaller id is kept (wire/SPEC.md, Handshake): a dialler
// with a larger id is declined if we are dialling it or hold a live conn we
// dialled to it, and it then uses ours (connect). Registering happens
// before the conn reads a frame: once the peer's ATTACH is answered, the
// peer may tell us about it (a child saying "ready"), and a Sender of ours
// to the peer must find this conn rather than dial a second one.
func (n *Node) admit(c *conn) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return admitClosed
	}
	id := c.remoteID
	if n.id < id {
		old := n.dialed[id]
		if n.dialing[id] != nil || old != nil && old.dialed && !old.isClosed() {
			return admitDecline
		}
	}
	n.conns[c] = struct{}{}
	n.wg.Add(2)
	if old := n.dialed[id]; old == nil || old.isClosed() || old.dialed && id < n.id {
		n.dialed[id] = c
	}
	close(n.connEv)
	n.connEv = make(chan struct{})
	return admitOK
}

// unadmit undoes admit for a conn whose handshake then failed.
func (n *Node) unadmit(c *conn) {
	n.dropConn(c)
	n.wg.Add(-2)
}

func (n *Node) dropConn(c *conn) {
	n.mu.Lock()
	delete(n.conns, c)
	for k, v := range n.dialed {
		if v == c {
			delete(n.dialed, k)
		}
	}
	n.mu.Unlock()
}

// connect returns a live connection to the node reachable at addr,
// reusing one if it exists, whichever end dialled it. key identifies the
// peer in the cache.
func (n *Node) connect(ctx context.Context, key string, addr *url.URL) (*conn, error) {
	for attempt := 0; ; attempt++ {
		c, peer, err := n.dial(ctx, key, addr)
		if !errors.Is(err, errUseTheirs) {
			return c, err
		}
		if attempt == 2 {
			return nil, &OpError{Op: "dial", Name: addr.String(), Err: fmt.Errorf("%w: %w, and its connection never came", ErrPeerGone, err)}
		}
		// The peer is dialling us at the same moment and its conn is the
		// one kept: wait for it. If its dial fails, dial again.
		if c, err := n.awaitConn(ctx, key, peer, 2*time.Second); c != nil || err != nil {
			return c, err
		}
	}
}

// dialCall is a dial in progress, which other callers wanting the same
// peer wait for rather than dial a second conn.
type dialCall struct {
	done chan struct{}
	c    *conn
	peer string
	err  error
}

// dial is one attempt of connect. On errUseTheirs it returns the peer's id.
func (n *Node) dial(ctx context.Context, key string, addr *url.URL) (*conn, string, error) {
	n.mu.Lock()
	if c := n.dialed[key]; c != nil && !c.isClosed() {
		n.mu.Unlock()
		return c, "", nil
	}
	if n.closed {
		n.mu.Unlock()
		return nil, "", ErrClosed
	}
	if dc := n.dialing[key]; dc != nil {
		n.mu.Unlock()
		select {
		case <-dc.done:
			return dc.c, dc.peer, dc.err
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
	dc := &dialCall{done: make(chan struct{})}
	n.dialing[key] = dc
	n.mu.Unlock()
	dc.c, dc.peer, dc.err = n.dialOnce(ctx, key, addr)
	close(dc.done)
	return dc.c, dc.peer, dc.err
}

// dialOnce dials; it ends the dialCall registered under key.
func (n *Node) dialOnce(ctx context.Context, key string, addr *url.URL) (*conn, string, error) {
	done := func() { delete(n.dialing, key) }
	nc, err := transport.Dial(ctx, addr, n.tcfg)
	if err != nil {
		n.mu.Lock()
		done()
		n.mu.Unlock()
		return nil, "", &OpError{Op: "dial", Name: addr.String(), Err: fmt.Errorf("%w: %w", ErrPeerGone, err)}
	}
	c := newConn(n, nc, true)
	err = c.handshake(ctx)
	n.mu.Lock()
	done()
	if err != nil {
		n.mu.Unlock()
		nc.Close()
		if errors.Is(err, errUseTheirs) {
			return nil, c.remoteID, err
		}
		return nil, "", &OpError{Op: "dial", Name: addr.String(), Err: err}
	}
	if n.closed {
		n.mu.Unlock()
		nc.Close()
		return nil, "", ErrClosed
	}
	// Another conn to the same node may have appeared meanwhile (another
	// goroutine of ours dialled it, or the peer dialled us by an explicit
	// address, which admit cannot match with our dial). This one is kept
	// all the same, not closed: the peer may already use it for its own
	// traffic, and a hang-up would look to it like our death. Both ends
	// prefer the conn dialled by the node with the smaller id for new
	// attachments (see also admit).
	use := c
	if old := n.dialed[key]; old != nil && !old.isClosed() {
		if old.dialed || old.remoteID != c.remoteID || c.remoteID < n.id {
			use = old
		}
	} else if o := n.dialed[c.remoteID]; key != c.remoteID && o != nil && !o.isClosed() && sameKind(o.nc, nc) {
		// Dialled by address while a conn of the same kind to that node
		// exists already (the peer dialled it, as a rule): both directions
		// then share one conn, as they do between nodes that find each
		// other by name. Over TCP that halves a ping-pong between the two
		// (each segment's ACK rides on the reply instead of being a packet
		// of its own). The fresh conn stays open: the peer may already use
		// it.
		use = o
	}
	n.dialed[key] = use
	n.conns[c] = struct{}{}
	n.wg.Add(2)
	n.mu.Unlock()
	c.start()
	return use, "", nil
}

// sameKind reports whether a conn on b may carry what was dialled on a:
// the same transport, and not TLS, where the conn the peer dialled would
// not have verified the peer's certificate as a server the way our dial
// did.
func sameKind(a, b net.Conn) bool {
	_, aTLS := a.(*tls.Conn)
	_, bTLS := b.(*tls.Conn)
	return !aTLS && !bTLS && reflect.TypeOf(a) == reflect.TypeOf(b)
}

// awaitConn waits up to timeout for a live conn from peer to be admitted,
// and caches it under key too. It returns nil, nil on timeout.
func (n *Node) awaitConn(ctx context.Context, key, peer string, timeout time.Duration) (*conn, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		n.mu.Lock()
		if c := n.dialed[peer]; c != nil && !c.isClosed() {
			n.dialed[key] = c
			n.mu.Unlock()
			return c, nil
		}
		if n.closed {
			n.mu.Unlock()
			return nil, ErrClosed
		}
		ev := n.connEv
		n.mu.Unlock()
		select {
		case <-ev:
		case <-t.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// sweepSockets removes the socket files of nodes that died without closing
// (SIGKILL): a node's sockets are stale once it is not registered. Files
// younger than a few seconds are left alone, since a node listens before it
// registers.
func sweepSockets(reg *names.Registry, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".sock")
		if !ok {
			id, ok = strings.CutSuffix(e.Name(), ".shm")
		}
		if !ok {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < 5*time.Second {
			continue
		}
		if _, err := reg.Node(id); errors.Is(err, names.ErrNotFound) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func regName(kind, name string) string { return kind + ":" + name }

func (n *Node) addReceiver(r *Receiver) error {
	key := regName(r.kind, r.name)
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	if _, ok := n.receivers[key]; ok {
		n.mu.Unlock()
		return fmt.Errorf("loft: this node already receives on %s %q: share that Receiver between goroutines", r.kind, r.name)
	}
	n.receivers[key] = r
	n.mu.Unlock()
	meta := map[string]string{
		"kind":     r.kind,
		"capacity": fmt.Sprint(r.opts.Capacity),
		"onfull":   r.opts.OnFull.String(),
		"delivery": r.opts.Delivery.String(),
	}
	if err := n.lease.Bind(key, meta); err != nil {
		n.mu.Lock()
		delete(n.receivers, key)
		n.mu.Unlock()
		return err
	}
	return nil
}

func (n *Node) removeReceiver(r *Receiver) {
	key := regName(r.kind, r.name)
	n.mu.Lock()
	if n.receivers[key] == r {
		delete(n.receivers, key)
	}
	lease := n.lease
	n.mu.Unlock()
	if lease != nil {
		lease.Unbind(key)
	}
}

func (n *Node) findReceiver(kind, name string) *Receiver {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.receivers[regName(kind, name)]
}

// Receive opens the receiving end of the channel name on this node. The
// options set the channel's semantics; every receiver of one channel should
// use the same.
func (n *Node) Receive(ctx context.Context, name string, opts ChannelOptions) (*Receiver, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	r := newReceiver(n, kindChannel, name, opts)
	if err := n.addReceiver(r); err != nil {
		return nil, &OpError{Op: "receive", Name: name, Err: err}
	}
	return r, nil
}

// Subscribe subscribes to the topic name. Every publisher's message reaches
// every current subscriber. Topic delivery is AtMostOnce; opts.Capacity
// bounds this subscriber's queue and opts.OnFull says what a publisher does
// when it is full.
func (n *Node) Subscribe(ctx context.Context, topic string, opts ChannelOptions) (*Receiver, error) {
	if err := checkName(topic); err != nil {
		return nil, err
	}
	opts.Delivery = AtMostOnce
	r := newReceiver(n, kindTopic, topic, opts)
	if err := n.addReceiver(r); err != nil {
		return nil, &OpError{Op: "subscribe", Name: topic, Err: err}
	}
	return r, nil
}

func checkName(name string) error {
	if name == "" || len(name) > 200 || strings.ContainsAny(name, "\x00/") {
		return fmt.Errorf("%w: name %q: 1 to 200 bytes, no '/' or NUL", ErrBadAddress, name)
	}
	return nil
}

// Sender returns a sender to addr: a bare channel name ("jobs") found
// through the name service, or a URL naming the node explicitly:
// tcp://host:port/jobs or unix:///path/to/node.sock/jobs.
func (n *Node) Sender(ctx context.Context, addr string) (*Sender, error) {
	return n.newSender(kindChannel, addr)
}

// Publisher returns a sender that delivers each message to every current
// subscriber of topic (a name, or a URL as for Sender).
func (n *Node) Publisher(ctx context.Context, topic string) (*Sender, error) {
	return n.newSender(kindTopic, topic)
}

func (n *Node) newSender(kind, addr string) (*Sender, error) {
	name, target, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	s := newSender(n, kind, name, target)
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	n.senders[s] = struct{}{}
	n.mu.Unlock()
	n.refresh(s)
	return s, nil
}

// parseAddr splits an address into a name and an explicit target URL.
func parseAddr(addr string) (name, target string, err error) {
	if !strings.Contains(addr, "://") {
		return addr, "", checkName(addr)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrBadAddress, err)
	}
	switch u.Scheme {
	case "tcp", "inproc":
		name = strings.TrimPrefix(u.Path, "/")
		u.Path = ""
	case "unix":
		i := strings.Index(u.Path, ".sock/")
		if i < 0 {
			return "", "", fmt.Errorf("%w: %q: want unix:///path/node.sock/NAME", ErrBadAddress, addr)
		}
		name = u.Path[i+len(".sock/"):]
		u.Path = u.Path[:i+len(".sock")]
	default:
		return "", "", fmt.Errorf("%w: %q: scheme %q is not one of tcp, unix, inproc", ErrBadAddress, addr, u.Scheme)
	}
	if err := checkName(name); err != nil {
		return "", "", err
	}
	return name, u.String(), nil
}

// SendTo sends data to the inbox of node id.
func (n *Node) SendTo(ctx context.Context, id string, data []byte) error {
	n.mu.Lock()
	s := n.inboxTo[id]
	n.mu.Unlock()
	if s == nil {
		var err error
		s, err = n.newSender(kindInbox, id)
		if err != nil {
			return err
		}
		n.mu.Lock()
		if old := n.inboxTo[id]; old != nil {
			n.mu.Unlock()
			s.Close()
			s = old
		} else {
			n.inboxTo[id] = s
			n.mu.Unlock()
		}
	}
	return s.Send(ctx, data)
}

func (n *Node) removeSender(s *Sender) {
	n.mu.Lock()
	delete(n.senders, s)
	if s.kind == kindInbox && n.inboxTo[s.name] == s {
		delete(n.inboxTo, s.name)
	}
	n.mu.Unlock()
}

// kickDiscovery asks the discovery loop to look for receivers now.
func (n *Node) kickDiscovery() {
	select {
	case n.disc <- struct{}{}:
	default:
	}
}

func (n *Node) discoveryLoop() {
	defer n.wg.Done()
	changes, err := n.reg.Changes(n.ctx)
	if err != nil && n.ctx.Err() == nil {
		n.log.Warn("name service changes not watched; polling", "err", err)
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				changes = nil // the watch ended; the ticker still polls
			}
		case <-n.disc:
		case <-t.C:
		}
		n.mu.Lock()
		ss := make([]*Sender, 0, len(n.senders))
		for s := range n.senders {
			ss = append(ss, s)
		}
		n.mu.Unlock()
		for _, s := range ss {
			n.refresh(s)
		}
	}
}

// refresh attaches s to receivers it is not attached to yet.
func (n *Node) refresh(s *Sender) {
	type cand struct {
		key  string
		addr *url.URL
	}
	var cands []cand
	if s.target != "" {
		u, _ := url.Parse(s.target)
		cands = append(cands, cand{key: s.target, addr: u})
	} else {
		hs, err := n.reg.Lookup(regName(s.kind, s.name))
		if err != nil {
			n.log.Debug("lookup failed", "name", s.name, "err", err)
			return
		}
		for _, h := range hs {
			if u := n.localAddr(h.Node); u != nil {
				cands = append(cands, cand{key: h.Node.ID, addr: u})
			}
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	var todo []cand
	for _, c := range cands {
		busy := s.pending[c.key]
		for _, l := range s.links {
			if l.remote == c.key || l.c.remoteID == c.key {
				busy = true
			}
		}
		if !busy {
			s.pending[c.key] = true
			todo = append(todo, c)
		}
	}
	s.mu.Unlock()
	for _, c := range todo {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			err := n.attach(s, c.key, c.addr)
			if err != nil {
				s.mu.Lock()
				delete(s.pending, c.key)
				s.mu.Unlock()
				n.log.Debug("attach failed", "name", s.name, "peer", c.key, "err", err)
			}
		}()
	}
}

// localAddr picks how to reach a node on this host: shared memory unless
// this node turned it off, else its Unix socket.
func (n *Node) localAddr(info names.NodeInfo) *url.URL {
	var best, shm *url.URL
	for _, a := range info.Addrs {
		u, err := url.Parse(a)
		if err != nil {
			continue
		}
		switch {
		case u.Scheme == "inproc" && info.PID == os.Getpid() && !n.opts.NoInProcess:
			return u // a node of this very process
		case u.Scheme == "shm" && !n.opts.NoSharedMemory:
			shm = u
		case u.Scheme == "unix" && best == nil:
			best = u
		}
	}
	if shm != nil {
		return shm
	}
	return best
}

func (n *Node) attach(s *Sender, key string, addr *url.URL) error {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	c, err := n.connect(ctx, key, addr)
	if err != nil {
		return err
	}
	l := &link{s: s, c: c, remote: key}
	rep, err := c.attach(ctx, l, s.kind, s.name, s.stream)
	if err != nil {
		return err
	}
	if !s.addLink(l, rep) {
		c.detachLink(l.id)
	}
	return nil
}

// Close closes every receiver and sender of the node, its connections and
// listeners, and removes its names. It waits for the node's goroutines.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	rs := make([]*Receiver, 0, len(n.receivers))
	for _, r := range n.receivers {
		rs = append(rs, r)
	}
	ss := make([]*Sender, 0, len(n.senders))
	for s := range n.senders {
		ss = append(ss, s)
	}
	lns := n.lns
	n.mu.Unlock()
	if n.cancel != nil {
		n.cancel()
	}
	for _, s := range ss {
		s.Close()
	}
	for _, r := range rs {
		r.Close()
	}
	for _, l := range lns {
		l.Close()
	}
	n.mu.Lock()
	cs := make([]*conn, 0, len(n.conns))
	for c := range n.conns {
		cs = append(cs, c)
	}
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.shutdown(time.Second)
		}()
	}
	wg.Wait()
	var err error
	if n.lease != nil {
		err = n.lease.Close()
	}
	for _, a := range n.addrs {
		if u, err := url.Parse(a); err == nil && (u.Scheme == "unix" || u.Scheme == "shm") {
			os.Remove(u.Path)
		}
	}
	n.wg.Wait()
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}
