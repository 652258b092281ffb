package loft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/loft-ipc/loft/wire"
	"golang.org/x/sys/unix"
)

// TestReleaseAfterPoolEnd: a RELEASE that comes in after the connection
// began to close, when its pool has taken its loans back, is no protocol
// error (the peer released in good faith). A RELEASE of a range a live
// pool never lent still is.
func TestReleaseAfterPoolEnd(t *testing.T) {
	n, err := Open(context.Background(), Options{Dir: filepath.Join(t.TempDir(), "rt")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a, b := net.Pipe()
	defer b.Close()
	c := newConn(n, a, false)
	c.remoteID = "test"
	defer c.close(nil)
	p, fd, err := newOutPool(4 * loanBlock)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	c.pool = p
	off, ok := p.lend(100)
	if !ok {
		t.Fatal("lend failed")
	}
	release := func(off int) error {
		pl := binary.AppendUvarint(nil, p.id)
		pl = binary.AppendUvarint(pl, uint64(off))
		rd := wire.NewReader(bytes.NewReader(wire.AppendFrame(nil, wire.TRelease, 0, pl)), 1<<16)
		rd.SkipChecksums()
		fr, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		return c.handle(fr)
	}
	if err := release(off + loanBlock); !errors.Is(err, ErrProtocol) {
		t.Errorf("RELEASE of a range never lent: %v, want ErrProtocol", err)
	}
	c.closePools() // as when the connection ends: the pool takes its loans back
	if err := release(off); err != nil {
		t.Errorf("RELEASE after the pool ended: %v, want none", err)
	}
}
