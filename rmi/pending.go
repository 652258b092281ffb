package rmi

// pendTable is a peer's pending calls (the calls this endpoint made and
// waits for the reply of) by call id. Call ids are the endpoint's own
// (Endpoint.nextID: increasing, never reused), so a pending call mostly
// sits in a small array at its id's low bits: no hashing, no map entry
// per call. A call whose slot is held by another call still pending (a
// long one, or ids interleaved with other peers') goes to a map. Under
// ep.mu.
type pendTable struct {
	slots [pendSlots]pendSlot
	more  map[uint64]*pending // the calls whose slot was taken
	n     int
}

type pendSlot struct {
	id uint64
	pd *pending // nil: free
}

// pendSlots is the size of pendTable's array: more than the calls a peer
// typically has pending at once.
const pendSlots = 64

// put adds call id, which is not in t.
func (t *pendTable) put(id uint64, pd *pending) {
	s := &t.slots[id%pendSlots]
	if s.pd == nil {
		*s = pendSlot{id: id, pd: pd}
	} else {
		if t.more == nil {
			t.more = map[uint64]*pending{}
		}
		t.more[id] = pd
	}
	t.n++
}

// take removes call id from t and returns it; nil if it is not in t.
func (t *pendTable) take(id uint64) *pending {
	if s := &t.slots[id%pendSlots]; s.pd != nil && s.id == id {
		pd := s.pd
		*s = pendSlot{}
		t.n--
		return pd
	}
	if pd := t.more[id]; pd != nil {
		delete(t.more, id)
		t.n--
		return pd
	}
	return nil
}

// all returns the calls in t, in no order.
func (t *pendTable) all() []*pending {
	pds := make([]*pending, 0, t.n)
	for _, s := range t.slots {
		if s.pd != nil {
			pds = append(pds, s.pd)
		}
	}
	for _, pd := range t.more {
		pds = append(pds, pd)
	}
	return pds
}
