package loft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// soakRounds is how many SIGKILLs TestSoakKill deals: 10 in an ordinary run,
// LOFT_SOAK=N for the long soak (README: LOFT_SOAK=200).
func soakRounds() int {
	if n, err := strconv.Atoi(os.Getenv("LOFT_SOAK")); err == nil && n > 0 {
		return n
	}
	return 10
}

// TestSoakKill kills, at random points, the receiving side (half the rounds)
// or the sending side (the other half) of an at-least-once channel over
// shared memory, and checks that nothing hangs, that no message is lost
// (every message the receiver reported, or the sender saw acknowledged,
// accounted for), and that no file is left behind once the survivors close.
func TestSoakKill(t *testing.T) {
	rounds := soakRounds()
	dir := runtimeDir(t)
	shmBefore := countShm(t)
	for i := 0; i < rounds; i++ {
		if i%2 == 0 {
			soakKillReceiver(t, dir, i)
		} else {
			soakKillSender(t, dir, i)
		}
	}
	// The runtime directory holds nothing of the dead: a fresh node sweeps
	// sockets of dead nodes older than a few seconds, and lookups drop
	// their names. Check names now; sockets of the last seconds may stay.
	n := openNode(t, dir, Options{})
	if hs, err := n.reg.Lookup(regName(kindChannel, "soak")); err != nil || len(hs) != 0 {
		t.Errorf("names of killed nodes left behind: %v %v", hs, err)
	}
	if after := countShm(t); after > shmBefore {
		t.Errorf("%d files appeared in /dev/shm", after-shmBefore)
	}
	t.Logf("%d SIGKILLs", rounds)
}

func countShm(t *testing.T) int {
	ents, err := os.ReadDir("/dev/shm")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if strings.Contains(e.Name(), "loft") {
			n++
		}
	}
	return n
}

func soakKillReceiver(t *testing.T, dir string, round int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim := startChild(t, dir, "soak-recv", "name=soak", "cap=32")
	victim.Expect("ready", 10*time.Second)
	n := openNode(t, dir, Options{})
	s, err := n.Sender(ctx, "soak")
	if err != nil {
		t.Fatal(err)
	}
	waitReceivers(t, s, 1)
	total := 200 + rand.IntN(300)
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < total; {
			err := s.Send(ctx, soakPayload(i))
			if errors.Is(err, ErrPeerGone) {
				waitReceivers(t, s, 1) // the message was not accepted: retry once one is back
				continue
			}
			if err != nil {
				sendErr <- err
				return
			}
			i++
		}
		sendErr <- s.Flush(ctx)
	}()
	// Kill the receiver after a random share of the messages, then start
	// another: what the dead one took and did not report comes again.
	seen := map[int]bool{}
	killAt := rand.IntN(total)
	for len(seen) < killAt {
		select {
		case l, ok := <-victim.Lines:
			if !ok {
				t.Fatal("receiver exited early")
			}
			if v, ok := soakGot(t, l); ok {
				seen[v] = true
			}
		case <-ctx.Done():
			t.Fatalf("round %d: hung before the kill with %d of %d", round, len(seen), total)
		}
	}
	victim.Kill()
	for l := range victim.Lines {
		if v, ok := soakGot(t, l); ok {
			seen[v] = true
		}
	}
	next := startChild(t, dir, "soak-recv", "name=soak", "cap=32")
	next.Expect("ready", 10*time.Second)
	for len(seen) < total {
		select {
		case l := <-next.Lines:
			if v, ok := soakGot(t, l); ok {
				seen[v] = true
			}
		case <-ctx.Done():
			t.Fatalf("round %d (receiver killed after %d): %d of %d received, sender %+v", round, killAt, len(seen), total, s.Stats())
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	if st := s.Stats(); st.Lent == 0 {
		t.Fatalf("round %d: no large message went through the loan pool: %+v", round, st)
	}
	s.Close()
	n.Close()
	next.Kill()
}

// soakPayload is message i of a soak: its id, and for every fourth one
// 40 KiB of byte(i) after a '|', so that large messages (lent over shared
// memory) are in flight when a side dies too.
func soakPayload(i int) []byte {
	b := strconv.AppendInt(nil, int64(i), 10)
	if i%4 == 3 {
		b = append(b, '|')
		b = append(b, bytes.Repeat([]byte{byte(i)}, 40<<10)...)
	}
	return b
}

// soakID checks a soak payload and returns its id as text.
func soakID(b []byte) (string, error) {
	id, pad, large := bytes.Cut(b, []byte{'|'})
	i, err := strconv.Atoi(string(id))
	if err != nil {
		return "", fmt.Errorf("soak message %.20q has no id", b)
	}
	if large != (i%4 == 3) || large && (len(pad) != 40<<10 || bytes.Count(pad, []byte{byte(i)}) != len(pad)) {
		return "", fmt.Errorf("soak message %d arrived damaged (%d bytes)", i, len(b))
	}
	return string(id), nil
}

// soakMessage checks a soak message and returns its id.
func soakMessage(t *testing.T, m Message) int {
	t.Helper()
	id, err := soakID(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := strconv.Atoi(id)
	return v
}

// soakGot parses a "got" line of a soak receiver, failing the test on a
// "bad" one.
func soakGot(t *testing.T, l string) (int, bool) {
	t.Helper()
	if strings.HasPrefix(l, "bad ") {
		t.Fatal(l)
	}
	return gotID(l)
}

func gotID(l string) (int, bool) {
	f := strings.Fields(l)
	if len(f) != 3 || f[0] != "got" {
		return 0, false
	}
	v, err := strconv.Atoi(f[2])
	return v, err == nil
}

func soakKillSender(t *testing.T, dir string, round int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := openNode(t, dir, Options{})
	r, err := n.Receive(ctx, "soak", ChannelOptions{Capacity: 32})
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	victim := startChild(t, dir, "soak-send", "name=soak", "start=0")
	victim.Expect("ready", 10*time.Second)
	flushed := -1
	killAfter := 25 + rand.IntN(400)
	for len(got) < killAfter {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got[soakMessage(t, m)] = true
	}
	victim.Kill()
	for l := range victim.Lines {
		if v, ok := strings.CutPrefix(l, "flushed "); ok {
			flushed, _ = strconv.Atoi(v)
		}
	}
	// Every message up to the last reported flush was acknowledged, so it
	// was received; what the sender had in flight when it died may or may
	// not arrive (its memory died with it).
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i <= flushed; i++ {
		for !got[i] {
			rctx, rcancel := context.WithDeadline(ctx, deadline)
			m, err := r.Recv(rctx)
			rcancel()
			if err != nil {
				t.Fatalf("round %d: message %d acknowledged to the killed sender (flushed up to %d) never received: %v", round, i, flushed, err)
			}
			got[soakMessage(t, m)] = true
		}
	}
	r.Close()
	n.Close()
}
