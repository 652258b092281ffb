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
	l.pushUnack(1, first, nil)
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
	l.dropUnack(1)
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
	l.pushUnack(id+1, s.keep(id+1, msg(id+1)), nil)
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
		l.pushUnack(id, c, nil)
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
	l.pushUnack(4, c4, nil)
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

// TestRetainedRuns: small messages kept one after another in a chunk, with
// consecutive ids, share one retained entry; acknowledging part of a run,
// popping from it and crossing into a new chunk give back every message, in
// order, with its content.
func TestRetainedRuns(t *testing.T) {
	s := newSender(nil, kindChannel, "runs", "")
	l := &link{s: s, limit: 1 << 20}
	s.links = []*link{l}
	msg := func(id uint64) []byte { return bytes.Repeat([]byte{byte(id)}, 100+int(id%7)) }
	put := func(id uint64) {
		s.nextID = id
		data, rec := s.keepRec(id, msg(id))
		l.pushUnack(id, data, rec)
	}
	for id := uint64(1); id <= 10; id++ {
		put(id)
	}
	if l.unack.len() != 1 || l.unackN != 10 {
		t.Fatalf("10 consecutive messages: %d entries holding %d, want 1 holding 10", l.unack.len(), l.unackN)
	}
	put(12) // 11 went to another link
	if l.unack.len() != 2 {
		t.Fatalf("a gap in the ids did not start a new entry (%d entries)", l.unack.len())
	}
	l.dropUnack(3)
	if f := l.unack.peek(); f.id != 4 || f.n != 7 || l.unackN != 8 {
		t.Fatalf("after dropping 3: front id %d holding %d, %d in all; want 4, 7, 8", f.id, f.n, l.unackN)
	}
	want := []uint64{4, 5, 6, 7, 8, 9, 10, 12}
	for _, id := range want[:2] {
		if r := l.popUnack(); r.id != id || !bytes.Equal(r.data, msg(id)) {
			t.Fatalf("popped id %d (%d bytes), want %d", r.id, len(r.data), id)
		}
	}
	// Enough messages to fill several chunks: runs end at chunk borders.
	next := uint64(13)
	for ; next < 2000; next++ {
		put(next)
	}
	if l.unack.len() < 3 {
		t.Fatalf("%d entries for messages spanning several chunks", l.unack.len())
	}
	ids := append(want[2:], make([]uint64, 0, 2000)...)
	for id := uint64(13); id < next; id++ {
		ids = append(ids, id)
	}
	for i, id := range ids {
		if i%500 == 499 {
			l.dropUnack(1) // acknowledged in the middle of a run
			continue
		}
		r := l.popUnack()
		if r.id != id || !bytes.Equal(r.data, msg(id)) {
			t.Fatalf("message %d: popped id %d (%d bytes)", id, r.id, len(r.data))
		}
	}
	if l.unackN != 0 || l.unack.len() != 0 {
		t.Fatalf("%d messages in %d entries left", l.unackN, l.unack.len())
	}
}
