package shmconn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
)

func TestMain(m *testing.M) {
	if os.Getenv("SHMCONN_CHILD") != "" {
		child()
		return
	}
	goleak.VerifyTestMain(m)
}

// child dials the listener named in SHMCONN_PATH, writes what it was told
// and then waits to be killed.
func child() {
	c, err := Dial(context.Background(), os.Getenv("SHMCONN_PATH"), &Config{RingSize: 1 << 16})
	if err != nil {
		os.Exit(2)
	}
	c.Write([]byte("hello from the child"))
	os.Stdout.Write([]byte("written\n"))
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func listen(t testing.TB, cfg *Config) (*Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(context.Background(), path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func pair(t testing.TB, cfg *Config) (net.Conn, net.Conn) {
	t.Helper()
	l, path := listen(t, cfg)
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	d, err := Dial(context.Background(), path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return d, r.c
}

func TestTransferAcrossWrap(t *testing.T) {
	lost := LostWakeups()
	for _, cfg := range []*Config{{RingSize: 4096}, {RingSize: 1 << 16, BusyPoll: true}} {
		a, b := pair(t, cfg)
		data := make([]byte, 3<<20+17)
		rand.Read(data)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := data; len(p) > 0; {
				n := min(len(p), 1000+len(p)%7000)
				if _, err := a.Write(p[:n]); err != nil {
					t.Error(err)
					return
				}
				p = p[n:]
			}
			a.Close()
		}()
		got, err := io.ReadAll(b)
		if err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		b.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("received %d bytes, not equal to the %d sent", len(got), len(data))
		}
		if n := LostWakeups() - lost; n > 0 {
			t.Fatalf("%d lost wake-ups (recovered by the bounded sleep)", n)
		}
	}
}

// TestFullRingWakesWriterPerQuarter: a writer parked on a full ring is
// woken once a quarter of the ring is free, not by every small read (it
// was woken by nearly every one: a system call per read for the reader,
// and a writer taking turns with it on the CPU).
func TestFullRingWakesWriterPerQuarter(t *testing.T) {
	const ring, total, piece = 4096, 256 << 10, 64
	a, b := pair(t, &Config{RingSize: ring, Spin: time.Nanosecond})
	defer a.Close()
	defer b.Close()
	data := make([]byte, total)
	rand.Read(data)
	done := make(chan error, 1)
	var written atomic.Bool
	go func() {
		_, err := a.Write(data) // one Write: it parks whenever the ring is full
		written.Store(true)
		done <- err
	}()
	got := make([]byte, 0, total)
	buf := make([]byte, piece)
	parked := b.(*Conn).rx.prodPark
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < total {
		// Read only while the writer is parked: each read is one that
		// could wake it.
		for parked.Load() == 0 && !written.Load() && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatal(err)
		}
		got = append(got, buf...)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data differs")
	}
	wakes := b.(*Conn).spaceWakes.Load()
	if most := int64(2 * total / (ring / 4)); wakes > most {
		t.Errorf("the writer was woken %d times for %d reads of %d bytes from a ring of %d; want at most %d", wakes, total/piece, piece, ring, most)
	}
	t.Logf("%d wake-ups of the writer for %d reads", wakes, total/piece)
}

// TestParkedPingPong parks on nearly every message, both ways, for both the
// reader waiting for data and the writer waiting for room (messages are
// larger than the ring): every wake-up must come through the eventfds.
func TestParkedPingPong(t *testing.T) {
	lost := LostWakeups()
	cfg := &Config{RingSize: 4096, Spin: time.Nanosecond}
	a, b := pair(t, cfg)
	defer a.Close()
	defer b.Close()
	rounds := 3000
	if testing.Short() {
		rounds = 300
	}
	sizes := []int{1, 100, 4095, 4096, 4097, 10000}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 10000)
		for i := 0; i < rounds; i++ {
			n := sizes[i%len(sizes)]
			if _, err := io.ReadFull(b, buf[:n]); err != nil {
				done <- err
				return
			}
			if _, err := b.Write(buf[:n]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	out := make([]byte, 10000)
	rand.Read(out)
	in := make([]byte, 10000)
	for i := 0; i < rounds; i++ {
		n := sizes[i%len(sizes)]
		if _, err := a.Write(out[:n]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(a, in[:n]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(in[:n], out[:n]) {
			t.Fatalf("round %d: echo differs", i)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := LostWakeups() - lost; n > 0 {
		t.Fatalf("%d lost wake-ups (recovered by the bounded sleep)", n)
	}
}

// TestSafetyNet: a peer that publishes without waking the parked reader
// (breaking the protocol) costs the bounded sleep, not a hang. The miss is
// counted when it is provably one (here the producer looks parked on the
// same ring), and not when it cannot be told from a slow publisher.
func TestSafetyNet(t *testing.T) {
	a, b := pair(t, &Config{RingSize: 4096, Spin: time.Nanosecond})
	defer a.Close()
	defer b.Close()
	w := &a.(*Conn).tx
	for _, tc := range []struct {
		peerParked bool
		lost       int64
	}{{true, 1}, {false, 0}} {
		lost := LostWakeups()
		go func() {
			for w.consPark.Load() == 0 { // until the reader is parked
				time.Sleep(100 * time.Microsecond)
			}
			if tc.peerParked {
				w.prodPark.Store(1)
			}
			tail := w.tail.Load()
			w.data[tail%w.size] = 'x'
			publish(w.tail, tail+1) // and no wake-up
		}()
		start := time.Now()
		buf := make([]byte, 1)
		if _, err := b.Read(buf); err != nil || buf[0] != 'x' {
			t.Fatalf("read %q, %v", buf, err)
		}
		w.prodPark.Store(0)
		if d := time.Since(start); d < sleepFirst {
			t.Errorf("read after %v, before the first bound", d)
		}
		if n := LostWakeups() - lost; n != tc.lost {
			t.Errorf("peer parked %v: %d lost wake-ups counted, want %d", tc.peerParked, n, tc.lost)
		}
	}
}

// TestCloseRightAfterWrite: bytes written just before Close are all read
// before end of file, however the reader's checks interleave with the close.
func TestCloseRightAfterWrite(t *testing.T) {
	for i := 0; i < 200; i++ {
		a, b := pair(t, &Config{RingSize: 4096, Spin: time.Nanosecond})
		msg := []byte("last words")
		go func() {
			a.Write(msg)
			a.Close()
		}()
		got, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("run %d: read %q, want %q", i, got, msg)
		}
	}
}

// TestNetConnContract runs the x/net conformance suite: deadlines,
// concurrent use, Close unblocking pending calls, and more.
func TestNetConnContract(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		path := filepath.Join(t.TempDir(), "n.sock")
		l, err := Listen(context.Background(), path, &Config{RingSize: 1 << 16})
		if err != nil {
			return nil, nil, nil, err
		}
		ch := make(chan net.Conn, 1)
		go func() {
			c, _ := l.Accept()
			ch <- c
		}()
		d, err := Dial(context.Background(), path, &Config{RingSize: 1 << 16})
		if err != nil {
			l.Close()
			return nil, nil, nil, err
		}
		c2 = <-ch
		return d, c2, func() { d.Close(); c2.Close(); l.Close() }, nil
	})
}

func TestPeerKilledGivesEOFAfterData(t *testing.T) {
	l, path := listen(t, nil)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SHMCONN_CHILD=1", "SHMCONN_PATH="+path)
	out, _ := cmd.StdoutPipe()
	in, _ := cmd.StdinPipe()
	defer in.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := make([]byte, 8)
	io.ReadFull(out, line)
	start := time.Now()
	cmd.Process.Kill()
	cmd.Wait()
	// The message written before the SIGKILL survives its writer.
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "hello from the child" {
		t.Fatalf("read %q", got)
	}
	t.Logf("EOF %v after SIGKILL", time.Since(start))
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write to a dead peer succeeded")
	}
}

func TestBadHandshakeRefused(t *testing.T) {
	l, path := listen(t, nil)
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
			done <- errors.New("accepted a bad peer")
			return
		}
		done <- nil
	}()
	// A peer that sends garbage instead of a sealed memfd is dropped.
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("LOFTSMR1"))
	buf := make([]byte, 1)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Read(buf); err == nil {
		t.Fatal("listener answered a handshake without a memfd")
	}
	nc.Close()
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCheckHeader(t *testing.T) {
	good := make([]byte, HeaderSize+2*MinRing)
	copy(good, []byte{0x4c, 0x4f, 0x46, 0x54, 0x53, 0x4d, 0x52, 0x31, 1, 0, 0, 0, 0, 0x10, 0, 0})
	if err := checkHeader(good); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[12] = 3
	if err := checkHeader(bad); !errors.Is(err, ErrHello) {
		t.Fatalf("bad ring size accepted: %v", err)
	}
	if err := checkHeader(good[:HeaderSize+MinRing]); !errors.Is(err, ErrHello) {
		t.Fatalf("short region accepted: %v", err)
	}
}

// FuzzCheckHeader: any bytes as a region header are refused or accepted,
// never a panic, and accepted ones describe exactly the region's length.
func FuzzCheckHeader(f *testing.F) {
	good := make([]byte, HeaderSize+2*MinRing)
	copy(good, []byte{0x4c, 0x4f, 0x46, 0x54, 0x53, 0x4d, 0x52, 0x31, 1, 0, 0, 0, 0, 0x10, 0, 0})
	f.Add(good[:64], uint16(2*MinRing))
	f.Add([]byte("garbage"), uint16(0))
	f.Fuzz(func(t *testing.T, hdr []byte, extra uint16) {
		mem := make([]byte, HeaderSize+int(extra))
		copy(mem, hdr)
		checkHeader(mem)
	})
}

// TestSpinAdapts: a reader whose waits end within maxSpin of their start
// spins longer than the configured base next time; once its waits keep
// ending in long sleeps, its spin shrinks back below the base.
func TestSpinAdapts(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the writer busy-waits while the reader waits: needs two Ps")
	}
	base := 2 * time.Microsecond
	a, b := pair(t, &Config{RingSize: 4096, Spin: base})
	defer a.Close()
	defer b.Close()
	rd := b.(*Conn)
	exchange := func(gap time.Duration) {
		t.Helper()
		errc := make(chan error, 1)
		started := make(chan struct{})
		go func() {
			var buf [1]byte
			close(started)
			_, err := io.ReadFull(b, buf[:])
			errc <- err
		}()
		<-started
		// Busy-wait, not sleep: the reader must wait about gap.
		for t0 := time.Now(); time.Since(t0) < gap; {
		}
		if _, err := a.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// Short waits: one that parks and is woken within maxSpin grows the
	// budget. (Bounded in rounds: on a loaded machine a wake-up can take
	// longer than maxSpin, so a few tries may not count.)
	grown := time.Duration(0)
	for i := 0; i < 2000 && grown <= base; i++ {
		exchange(10 * time.Microsecond)
		grown = time.Duration(rd.rxSpin.Load())
	}
	if grown <= base || grown > maxSpin {
		t.Fatalf("after short waits the spin is %v, want more than the base %v and at most %v", grown, base, maxSpin)
	}
	// Long waits: misses; four in a row halve the budget. (A wait can
	// still end early now and then, the reader being descheduled, and grow
	// it again: the test asks that it falls to the base, not that it stays.)
	low := grown
	for i := 0; i < 400 && low > base; i++ {
		exchange(time.Millisecond)
		low = time.Duration(rd.rxSpin.Load())
	}
	if low > base {
		t.Fatalf("after long waits the spin is %v (it had grown to %v), want at most the base %v", low, grown, base)
	}
}

// TestSpinYieldsAfterWakingPeer: a Read that waits for the answer of a
// peer its last Write had to wake yields the CPU as it spins (the peer may
// be woken on this CPU); one whose peer was awake spins without yielding.
func TestSpinYieldsAfterWakingPeer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spin   time.Duration // the peer's: 1 ns parks at once, 10 s spins
		yields bool
	}{
		{"parked peer", time.Nanosecond, true},
		{"spinning peer", 10 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// a spins for 5 ms before it parks; b as tc.spin says.
			a, b := pair(t, &Config{Spin: 5 * time.Millisecond})
			defer a.Close()
			defer b.Close()
			b.(*Conn).spin = tc.spin
			b.(*Conn).rxSpin.Store(int64(tc.spin))
			ac := a.(*Conn)
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, 1)
				if _, err := b.Read(buf); err != nil {
					done <- err
					return
				}
				// Answer after a's spin had time to loop: this delay is
				// what is tested, not a wait for something.
				time.Sleep(2 * time.Millisecond)
				_, err := b.Write(buf)
				done <- err
			}()
			// Write only once b is where tc wants it: parked, or spinning.
			for dl := time.Now().Add(5 * time.Second); tc.yields && ac.tx.consPark.Load() == 0; {
				if time.Now().After(dl) {
					t.Fatal("b never parked")
				}
				runtime.Gosched()
			}
			y0 := ac.yields.Load()
			if _, err := a.Write([]byte{7}); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1)
			if _, err := a.Read(buf); err != nil || buf[0] != 7 {
				t.Fatalf("read %v %v", buf, err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := ac.yields.Load() - y0; (got > 0) != tc.yields {
				t.Errorf("%d yields while waiting for the answer, want yields: %v", got, tc.yields)
			}
		})
	}
}

// TestTryWriteNeverWaits: TryWrite writes what fits, nothing when the ring
// is full, and the reader gets every byte in order.
func TestTryWriteNeverWaits(t *testing.T) {
	const ring = 4096
	a, b := pair(t, &Config{RingSize: ring})
	defer a.Close()
	defer b.Close()
	w := a.(*Conn)
	p := make([]byte, 3000)
	for i := range p {
		p[i] = byte(i)
	}
	if n, err := w.TryWrite(p); n != len(p) || err != nil {
		t.Fatalf("first TryWrite: %d, %v", n, err)
	}
	if n, err := w.TryWrite(p); n != ring-len(p) || err != nil {
		t.Fatalf("second TryWrite into %d free bytes: %d, %v", ring-len(p), n, err)
	}
	if n, err := w.TryWrite(p); n != 0 || err != nil {
		t.Fatalf("TryWrite into a full ring: %d, %v", n, err)
	}
	got := make([]byte, ring)
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if want := byte(i % len(p)); got[i] != want {
			t.Fatalf("byte %d: %d, want %d", i, got[i], want)
		}
	}
}
