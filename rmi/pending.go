package rmi

// idTable maps call ids to a peer's call state: its pending calls (the
// calls this endpoint made and waits for the reply of, pendTable) and the
// answers it keeps for the peer (answerTable). Call ids increase (each
// endpoint's nextID; never reused), so an entry mostly sits in a small
// array at its id's low bits: no hashing, no map entry per call. An entry
// whose slot is held by another (a long call, a long-kept answer, ids
// interleaved with other peers', or a peer choosing its ids otherwise)
// goes to a map. Under ep.mu.
type idTable[T any] struct {
	slots [idSlots]idSlot[T]
	more  map[uint64]*T // the entries whose slot was taken
	n     int
}

type idSlot[T any] struct {
	id uint64
	v  *T // nil: free
}

// idSlots is the size of idTable's array: more than the calls a peer
// typically has pending, or answers kept, at once.
const idSlots = 64

// pendTable is a peer's pending calls.
type pendTable = idTable[pending]

// answerTable is the answers kept for a peer (answer).
type answerTable = idTable[answer]

// put adds entry id, which is not in t.
func (t *idTable[T]) put(id uint64, v *T) {
	s := &t.slots[id%idSlots]
	if s.v == nil {
		*s = idSlot[T]{id: id, v: v}
	} else {
		if t.more == nil {
			t.more = map[uint64]*T{}
		}
		t.more[id] = v
	}
	t.n++
}

// get returns entry id; nil if it is not in t.
func (t *idTable[T]) get(id uint64) *T {
	if s := &t.slots[id%idSlots]; s.v != nil && s.id == id {
		return s.v
	}
	if t.more == nil {
		return nil
	}
	return t.more[id]
}

// take removes entry id from t and returns it; nil if it is not in t.
func (t *idTable[T]) take(id uint64) *T {
	if s := &t.slots[id%idSlots]; s.v != nil && s.id == id {
		v := s.v
		*s = idSlot[T]{}
		t.n--
		return v
	}
	if v := t.more[id]; v != nil {
		delete(t.more, id)
		t.n--
		return v
	}
	return nil
}

// all returns the entries of t, in no order.
func (t *idTable[T]) all() []*T {
	vs := make([]*T, 0, t.n)
	for _, s := range t.slots {
		if s.v != nil {
			vs = append(vs, s.v)
		}
	}
	for _, v := range t.more {
		vs = append(vs, v)
	}
	return vs
}
