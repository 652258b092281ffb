package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/url"
	"testing"
	"time"

	"github.com/loft-ipc/loft/transport"
	"github.com/loft-ipc/loft/wire"
)

// TestChecksumsOnlyOnTCP: nodes on one host agree on frames without
// checksums (wire.FlagNoSum) over shared memory and Unix sockets, and keep
// them over TCP; small messages and large ones (a frame of their own, or a
// loan) pass either way, in both directions of the agreement.
func TestChecksumsOnlyOnTCP(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		tcp   bool
		nosum bool
	}{
		{"shm", Options{NoInProcess: true}, false, true},
		{"unix", Options{NoSharedMemory: true, NoInProcess: true}, false, true},
		{"tcp", Options{NoSharedMemory: true, NoInProcess: true, ListenTCP: "127.0.0.1:0"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dir := runtimeDir(t)
			tc.opts.Dir = dir
			a, b := openNode(t, dir, tc.opts), openNode(t, dir, tc.opts)
			r, err := b.Receive(ctx, "sum", ChannelOptions{Capacity: 8, MaxMessageSize: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			target := "sum"
			if tc.tcp {
				target = tcpURL(b) + "/sum"
			}
			s, err := a.Sender(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			waitReceivers(t, s, 1)
			big := make([]byte, 2*bigMessage+3)
			for i := range big {
				big[i] = byte(i * 7)
			}
			for i := range 3 {
				small := []byte{byte(i), 1, 2, 3}
				if err := s.Send(ctx, small); err != nil {
					t.Fatal(err)
				}
				if err := s.Send(ctx, big); err != nil {
					t.Fatal(err)
				}
				for _, want := range [][]byte{small, big} {
					m, err := r.Recv(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(m.Data, want) {
						t.Fatalf("message %d: got %d bytes, want %d", i, len(m.Data), len(want))
					}
					m.Release()
				}
			}
			ca := linkConn(s)
			r.mu.Lock()
			var cb *conn
			for x := range r.atts {
				cb = x.c
			}
			r.mu.Unlock()
			if ca.nosum != tc.nosum || cb == nil || cb.nosum != tc.nosum {
				t.Errorf("without checksums: dialler %v, acceptor %v; want %v", ca.nosum, cb != nil && cb.nosum, tc.nosum)
			}
		})
	}
}

// TestNoSumHandshake: a peer that offers wire.FlagNoSum in its HELLO on a
// Unix socket gets it back and may then send frames whose checksum is
// zero; a peer that does not offer it (an older one) gets frames with
// checksums, and a frame with a wrong one closes its connection.
func TestNoSumHandshake(t *testing.T) {
	for _, offer := range []bool{true, false} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dir := runtimeDir(t)
		n := openNode(t, dir, Options{Dir: dir, NoSharedMemory: true, NoInProcess: true})
		if _, err := n.Receive(ctx, "ns", ChannelOptions{Capacity: 4}); err != nil {
			t.Fatal(err)
		}
		var u *url.URL
		for _, a := range n.Addrs() {
			if x, _ := url.Parse(a); x.Scheme == "unix" {
				u = x
			}
		}
		c, err := transport.Dial(ctx, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var flags uint16
		if offer {
			flags = wire.FlagNoSum
		}
		p := wire.AppendUvarint(nil, wire.Version)
		p = wire.AppendString(p, "raw-nosum")
		c.Write(wire.AppendFrame(nil, wire.THello, flags, p))
		rd := wire.NewReader(c, 1<<20)
		f, err := rd.Next()
		if err != nil || f.Type != wire.THelloAck {
			t.Fatalf("handshake: %v %v", f.Type, err)
		}
		if got := f.Flags&wire.FlagNoSum != 0; got != offer {
			t.Fatalf("offered no checksums: %v; HELLO_ACK agrees: %v", offer, got)
		}
		if offer {
			rd.SkipChecksums()
		}
		frame := attachFrame(1, kindChannel, "ns")
		binary.LittleEndian.PutUint32(frame[8:], 0) // no checksum
		c.Write(frame)
		if !offer {
			expectClosed(t, c, rd)
			continue
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err = rd.Next()
		if err != nil || f.Type != wire.TAttached {
			t.Fatalf("after ATTACH without a checksum: %v %v", f.Type, err)
		}
	}
}
