package loft

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestSimultaneousDial: two nodes that dial each other at the same moment
// end up talking over one connection (traffic both ways over two would cost
// a reader and a write each for acknowledgements on the other), and no
// connection the peer uses is closed under it (a hang-up would look like
// the peer's death: Watch would report it Down and links on it would fail).
func TestSimultaneousDial(t *testing.T) {
	for round := 0; round < 20; round++ {
		ns := testNodes(t, 2)
		a, b := ns[0], ns[1]
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		wctx, wcancel := context.WithCancel(ctx)
		events, err := a.Watch(wctx, "node:"+b.ID())
		if err != nil {
			t.Fatal(err)
		}
		ra, _ := a.Receive(ctx, "to-a", ChannelOptions{Capacity: 4})
		rb, _ := b.Receive(ctx, "to-b", ChannelOptions{Capacity: 4})
		var wg sync.WaitGroup
		send := func(n *Node, name string) {
			defer wg.Done()
			s, err := n.Sender(ctx, name)
			if err != nil {
				t.Error(err)
				return
			}
			for i := 0; i < 3; i++ {
				if err := s.Send(ctx, []byte(fmt.Sprint(i))); err != nil {
					t.Errorf("round %d: send to %s: %v", round, name, err)
					return
				}
			}
		}
		wg.Add(2)
		go send(a, "to-b")
		go send(b, "to-a")
		for i := 0; i < 3; i++ {
			for _, r := range []*Receiver{ra, rb} {
				m, err := r.Recv(ctx)
				if err != nil || string(m.Data) != fmt.Sprint(i) {
					t.Fatalf("round %d: %s got %q, %v", round, r.Name(), m.Data, err)
				}
			}
		}
		wg.Wait()
		for _, n := range ns {
			if k := liveConns(n); k != 1 {
				t.Errorf("round %d: node %s has %d live connections to its peer, want 1", round, n.ID(), k)
			}
		}
		wcancel()
		for ev := range events {
			if ev.Kind == Down {
				t.Fatalf("round %d: %s reported down while alive: %v", round, ev.Node, ev.Err)
			}
		}
		cancel()
		a.Close()
		b.Close()
	}
}

// liveConns counts n's open connections.
func liveConns(n *Node) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for c := range n.conns {
		if !c.isClosed() {
			k++
		}
	}
	return k
}

// TestTCPByAddressSharesConn: when a node sends by TCP address to a node
// that already sends to it over TCP, both directions share one connection,
// whichever node has the smaller id (the rounds cover both orders), and
// messages flow both ways.
func TestTCPByAddressSharesConn(t *testing.T) {
	for round := 0; round < 8; round++ {
		dir := runtimeDir(t)
		opts := Options{Dir: dir, NoSharedMemory: true, NoInProcess: true, ListenTCP: "127.0.0.1:0"}
		ca, cb := sendBothWays(t, openNode(t, dir, opts), openNode(t, dir, opts))
		if ca.nc.LocalAddr().String() != cb.nc.RemoteAddr().String() || ca.nc.RemoteAddr().String() != cb.nc.LocalAddr().String() {
			t.Errorf("round %d: a sends on %v->%v, b on %v->%v: two connections", round,
				ca.nc.LocalAddr(), ca.nc.RemoteAddr(), cb.nc.LocalAddr(), cb.nc.RemoteAddr())
		}
	}
}

// TestTLSByAddressKeepsItsConn: over TLS a node sends on the connection
// it dialled itself, which verified the peer's certificate as a server's,
// not on one the peer dialled to it.
func TestTLSByAddressKeepsItsConn(t *testing.T) {
	dir := runtimeDir(t)
	certA, poolA := selfSigned(t, "a")
	certB, poolB := selfSigned(t, "b")
	conf := func(own tls.Certificate, peer *x509.CertPool) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{own}, RootCAs: peer, ClientCAs: peer,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	}
	a := openNode(t, dir, Options{Dir: dir, NoSharedMemory: true, NoInProcess: true, ListenTCP: "127.0.0.1:0", TLS: conf(certA, poolB)})
	b := openNode(t, dir, Options{Dir: dir, NoSharedMemory: true, NoInProcess: true, ListenTCP: "127.0.0.1:0", TLS: conf(certB, poolA)})
	ca, cb := sendBothWays(t, a, b)
	if !ca.dialed || !cb.dialed {
		t.Errorf("over TLS a sends on a conn it dialled: %v, b: %v; want both", ca.dialed, cb.dialed)
	}
}

// sendBothWays has a send to b by b's TCP address, then b to a by a's,
// checks that messages pass both ways, and returns the conn each sends on.
func sendBothWays(t *testing.T, a, b *Node) (ca, cb *conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ra, err := a.Receive(ctx, "to-a", ChannelOptions{Capacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Receive(ctx, "to-b", ChannelOptions{Capacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	sa, err := a.Sender(ctx, tcpURL(b)+"/to-b")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, sa, 1)
	sb, err := b.Sender(ctx, tcpURL(a)+"/to-a")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, sb, 1)
	for i := range 3 {
		if err := sa.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if err := sb.Send(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []*Receiver{ra, rb} {
			if m, err := r.Recv(ctx); err != nil || len(m.Data) != 1 || m.Data[0] != byte(i) {
				t.Fatalf("%s got %v, %v", r.Name(), m.Data, err)
			}
		}
	}
	return linkConn(sa), linkConn(sb)
}

// linkConn returns the conn of s's only link.
func linkConn(s *Sender) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[0].c
}
