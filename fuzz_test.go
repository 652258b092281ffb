package loft

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/loft-ipc/loft/wire"
)

// FuzzConnFrames feeds arbitrary frame streams to the accepting side of a
// connection whose node has a receiver: whatever arrives, the node must not
// panic, and an error must close only that connection.
func FuzzConnFrames(f *testing.F) {
	f.Add(append(attachFrame(1, kindChannel, "fz"), dataFrame(1, []byte("hello"), []byte("x"))...))
	f.Add(append(attachFrame(1, kindChannel, "fz"), wire.AppendFrame(nil, wire.TDetach, 0, []byte{1})...))
	f.Add(append(attachFrame(2, kindTopic, "fz"), wire.AppendFrame(nil, wire.TAck, 0, []byte{2, 1, 1})...))
	f.Add(wire.AppendFrame(nil, wire.TData, wire.FlagFiles, []byte{1, 1, 1, 1, 'a', 3}))
	f.Add(wire.AppendFrame(nil, wire.TPing, 0, nil))
	f.Add(append(attachFrame(3, kindChannel, "fz-once"), dataFrame(3, []byte("a"), []byte("bb"), []byte{})...))
	f.Add(append(attachFrame(1, kindChannel, "fz"), seqDataFrame(1, 7, []byte("a"), []byte("bb"))...))
	f.Add(append(attachFrame(3, kindChannel, "fz-once"), seqDataFrame(3, 1, []byte("a"), nil)...))
	n, err := Open(context.Background(), Options{Dir: filepath.Join(f.TempDir(), "rt")})
	if err != nil {
		f.Fatal(err)
	}
	defer n.Close()
	r, err := n.Receive(context.Background(), "fz", ChannelOptions{Capacity: 4, MaxMessageSize: 64})
	if err != nil {
		f.Fatal(err)
	}
	// DATA frames to "fz" are queued as runs, to "fz-once" (ExactlyOnce)
	// message by message.
	once, err := n.Receive(context.Background(), "fz-once", ChannelOptions{Capacity: 4, MaxMessageSize: 64, Delivery: ExactlyOnce})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer b.Close()
		c := newConn(n, a, false)
		c.remoteID = "fuzz"
		rd := wire.NewReader(bytes.NewReader(in), 1<<16)
		rd.SkipChecksums() // as on a local connection: any bytes reach handle
		for i := 0; i < 100; i++ {
			fr, err := rd.Next()
			if err != nil {
				break
			}
			if err := c.handle(fr); err != nil {
				break
			}
		}
		c.close(nil)
		for _, x := range []*Receiver{r, once} {
			for {
				if _, err := x.TryRecv(); err != nil {
					break
				}
			}
		}
	})
}
