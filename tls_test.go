package loft

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// selfSigned makes a CA-less certificate for 127.0.0.1 usable by both
// sides (server and client authentication).
func selfSigned(t *testing.T, cn string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func tcpURL(n *Node) string {
	for _, a := range n.Addrs() {
		if strings.HasPrefix(a, "tcp://") {
			return a
		}
	}
	return ""
}

func TestMutualTLS(t *testing.T) {
	dir := runtimeDir(t)
	srvCert, srvPool := selfSigned(t, "server")
	cliCert, cliPool := selfSigned(t, "client")
	rn := openNode(t, dir, Options{ListenTCP: "127.0.0.1:0", TLS: &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    cliPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := rn.Receive(ctx, "secure", ChannelOptions{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	good := openNode(t, dir, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cliCert}, RootCAs: srvPool, MinVersion: tls.VersionTLS13}})
	s, err := good.Sender(ctx, tcpURL(rn)+"/secure")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctx, []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Recv(ctx); err != nil || string(m.Data) != "over tls" {
		t.Fatalf("%q %v", m.Data, err)
	}
	// A client without a certificate never gets attached.
	bad := openNode(t, dir, Options{TLS: &tls.Config{RootCAs: srvPool, MinVersion: tls.VersionTLS13}})
	bs, err := bad.Sender(ctx, tcpURL(rn)+"/secure")
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer scancel()
	if err := bs.Send(sctx, []byte("no cert")); err == nil {
		t.Fatal("a client without a certificate could send")
	}
	if st := r.Stats(); st.Received != 1 {
		t.Fatalf("receiver stats %+v", st)
	}
}

// freezeProxy forwards TCP until frozen, then holds the connections open
// and silent, like a network partition.
type freezeProxy struct {
	ln     net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(s, c)
			go p.pipe(c, s)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.frozen.Load() {
			// Swallow everything from now on; never close.
			if err != nil {
				return
			}
			continue
		}
		if n > 0 {
			dst.Write(buf[:n])
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// frozenTCPPair opens a receiver for name on a node listening on TCP and a
// sender to it on another node, through a freezeProxy; heartbeats every
// 50 ms, timeout 300 ms.
func frozenTCPPair(t *testing.T, ctx context.Context, name string) (*Receiver, *Sender, *freezeProxy) {
	t.Helper()
	dir := runtimeDir(t)
	hb := Options{HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond}
	ropts := hb
	ropts.ListenTCP = "127.0.0.1:0"
	rn := openNode(t, dir, ropts)
	r, err := rn.Receive(ctx, name, ChannelOptions{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	p := newFreezeProxy(t, strings.TrimPrefix(tcpURL(rn), "tcp://"))
	sn := openNode(t, dir, hb)
	s, err := sn.Sender(ctx, "tcp://"+p.ln.Addr().String()+"/"+name)
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	return r, s, p
}

// freezeUntil freezes the proxy and returns how long it took until gone
// reported true; it fails the test after 5 s.
func (p *freezeProxy) freezeUntil(t *testing.T, gone func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	p.frozen.Store(true)
	for !gone() {
		if time.Since(start) > 5*time.Second {
			t.Fatal("a silent peer was never declared gone")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func TestHeartbeatDetectsSilentPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, s, p := frozenTCPPair(t, ctx, "hb")
	// Idle for several heartbeat timeouts: pings keep the link alive.
	idle := time.After(time.Second)
	for done := false; !done; {
		select {
		case <-idle:
			done = true
		case <-time.After(50 * time.Millisecond):
			if s.Stats().Receivers != 1 {
				t.Fatal("an idle but healthy TCP link was dropped")
			}
		}
	}
	lat := p.freezeUntil(t, func() bool { return s.Stats().Receivers == 0 })
	t.Logf("silent peer declared gone %v after the partition (timeout 300ms)", lat)
	// The timeout runs from the last frame read, which came up to one
	// heartbeat interval before the partition.
	if lat < 300*time.Millisecond-50*time.Millisecond-10*time.Millisecond {
		t.Errorf("declared gone after %v, before the heartbeat timeout", lat)
	}
}
