package loft

import (
	"bytes"
	"testing"
)

// TestKeepReusesAcknowledgedChunks: retained copies of small messages are
// packed into chunks that are used again once every message in them is
// acknowledged (no allocation in steady state), and a chunk holding a
// message not yet acknowledged is never overwritten.
func TestKeepReusesAcknowledgedChunks(t *testing.T) {
	s := newSender(nil, kindChannel, "keep", "")
	msg := func(id uint64) []byte { return bytes.Repeat([]byte{byte(id)}, 100) }
	l := &link{s: s}
	s.links = []*link{l}
	// Message 1 stays unacknowledged throughout: its chunk must survive.
	s.nextID = 1
	first := s.keep(1, msg(1))
	l.unack.push(retained{id: 1, data: first})
	for id := uint64(2); id < 10000; id++ {
		s.nextID = id
		s.keep(id, msg(id))
	}
	if !bytes.Equal(first, msg(1)) {
		t.Fatal("an unacknowledged retained copy was overwritten")
	}
	grown := s.chunks.len()
	if want := 10000*100/retainChunk + 1; grown < want {
		t.Fatalf("%d chunks hold 10000 messages of 100 bytes while the first is unacknowledged, want at least %d", grown, want)
	}
	// Acknowledge everything: from now on chunks are used again.
	l.unack.drop(1)
	id := s.nextID
	allocs := testing.AllocsPerRun(20000, func() {
		id++
		s.nextID = id
		s.keep(id, msg(id)[:64])
	})
	// msg allocates once per call; keep itself must not.
	if allocs > 1 {
		t.Errorf("keep allocated %.2f times per message once everything was acknowledged, want 0", allocs-1)
	}
	if s.chunks.len() > grown {
		t.Errorf("chunks grew from %d to %d with everything acknowledged", grown, s.chunks.len())
	}
	// A message kept now and not acknowledged survives a full cycle.
	l.unack.push(retained{id: id + 1, data: s.keep(id+1, msg(id+1))})
	kept := l.unack.peek().data
	for k := id + 2; k < id+20000; k++ {
		s.nextID = k
		s.keep(k, msg(k))
	}
	if !bytes.Equal(kept, msg(id+1)) {
		t.Fatal("a retained copy made after chunks were reused was overwritten")
	}
}

// TestKeepEmptyFirst: an empty message kept before any chunk exists (a
// stream of large messages, each kept apart, ending with an empty one)
// needs no chunk.
func TestKeepEmptyFirst(t *testing.T) {
	s := newSender(nil, kindChannel, "keep", "")
	s.keep(1, make([]byte, retainChunk))
	if got := s.keep(2, nil); len(got) != 0 {
		t.Fatalf("kept %d bytes of an empty message", len(got))
	}
	if s.chunks.len() != 0 {
		t.Fatalf("%d chunks for no small message", s.chunks.len())
	}
}

// TestKeepBigReusesOnlyAcknowledged: the copy of a large message is reused
// for a later one only once an ACK covered it, and then with its content
// replaced; copies of messages not yet acknowledged are never handed out.
func TestKeepBigReusesOnlyAcknowledged(t *testing.T) {
	s := newSender(nil, kindChannel, "keepbig", "")
	l := &link{s: s, limit: 100}
	s.links = []*link{l}
	big := func(seed byte) []byte { return bytes.Repeat([]byte{seed}, 100<<10) }
	var kept [][]byte
	for id := uint64(1); id <= 3; id++ {
		s.nextID = id
		c := s.keep(id, big(byte(id)))
		l.unack.push(retained{id: id, data: c})
		l.sent++
		kept = append(kept, c)
	}
	// Nothing acknowledged: a fourth copy is fresh, the three stay intact.
	s.nextID = 4
	c4 := s.keep(4, big(4))
	for i, c := range kept {
		if &c[0] == &c4[0] {
			t.Fatalf("copy %d, not acknowledged, was handed out again", i+1)
		}
	}
	l.unack.push(retained{id: 4, data: c4})
	l.sent++
	// Acknowledge the first two: their copies, and only theirs, come back.
	if err := s.ack(l, 2, 100); err != nil {
		t.Fatal(err)
	}
	if len(s.bigFree) != 2 {
		t.Fatalf("%d copies taken back after an ACK of 2, want 2", len(s.bigFree))
	}
	for i := 0; i < 2; i++ {
		s.nextID = uint64(5 + i)
		c := s.keep(s.nextID, big(byte(5+i)))
		if &c[0] != &kept[0][0] && &c[0] != &kept[1][0] {
			t.Fatalf("message %d got a fresh copy while acknowledged ones waited", 5+i)
		}
		if !bytes.Equal(c, big(byte(5+i))) {
			t.Fatalf("message %d: a reused copy does not hold its content", 5+i)
		}
	}
	if !bytes.Equal(kept[2], big(3)) || !bytes.Equal(c4, big(4)) {
		t.Fatal("a copy not yet acknowledged was overwritten")
	}
}
