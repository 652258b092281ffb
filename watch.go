package loft

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// EventKind says whether a watched endpoint came up or went down.
type EventKind uint8

const (
	// Up means a node now holds the watched name.
	Up EventKind = iota + 1
	// Down means a node that held the name is gone: it died, closed its
	// connection, or released the name.
	Down
)

// String returns "up" or "down".
func (k EventKind) String() string {
	switch k {
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return "unknown"
}

// Event is one change seen by Watch.
type Event struct {
	Kind EventKind
	Name string    // the watched name
	Node string    // the node that came or went
	At   time.Time // when loft noticed
	Err  error     // for Down: why
}

// Watch reports the holders of a name as they come and go, like an Erlang
// monitor. For "node:ID", a node that is not running when Watch starts is
// reported Down at once. name is a channel name ("jobs"), "topic:NAME" for a topic's
// subscribers, or "node:ID" for a node. A holder that dies is reported as
// soon as the kernel closes its connection (no polling): on one host within
// milliseconds of SIGKILL; over TCP after the heartbeat timeout. The
// channel is closed when ctx ends.
func (n *Node) Watch(ctx context.Context, name string) (<-chan Event, error) {
	kind := kindChannel
	switch {
	case strings.HasPrefix(name, "topic:"):
		kind, name = kindTopic, strings.TrimPrefix(name, "topic:")
	case strings.HasPrefix(name, "node:"):
		kind, name = kindInbox, strings.TrimPrefix(name, "node:")
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	changes, err := n.reg.Changes(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan Event, 64)
	downs := make(chan Event, 64)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(out)
		live := map[string]*conn{}
		emit := func(e Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			case <-n.ctx.Done():
				return false
			}
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		if kind == kindInbox {
			// A node is watched by id: if it is not alive now, say so at
			// once rather than wait for an Up that will never come.
			if hs, err := n.reg.Lookup(regName(kind, name)); err == nil && len(hs) == 0 {
				if !emit(Event{Kind: Down, Name: name, Node: name, At: time.Now(), Err: fmt.Errorf("%w: node %s is not running", ErrPeerGone, name)}) {
					return
				}
			}
		}
		for {
			hs, err := n.reg.Lookup(regName(kind, name))
			if err == nil {
				seen := map[string]bool{}
				for _, h := range hs {
					seen[h.Node.ID] = true
					if live[h.Node.ID] != nil {
						continue
					}
					var c *conn
					if u := n.localAddr(h.Node); u != nil {
						cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
						c, _ = n.connect(cctx, h.Node.ID, u)
						cancel()
					}
					if c == nil {
						continue
					}
					live[h.Node.ID] = c
					if !emit(Event{Kind: Up, Name: name, Node: h.Node.ID, At: time.Now()}) {
						return
					}
					id := h.Node.ID
					go func() {
						select {
						case <-c.closed:
							select {
							case downs <- Event{Kind: Down, Name: name, Node: id, At: time.Now(), Err: c.err}:
							case <-ctx.Done():
							case <-n.ctx.Done():
							}
						case <-ctx.Done():
						case <-n.ctx.Done():
						}
					}()
				}
				for id, c := range live {
					if !seen[id] && !c.isClosed() {
						delete(live, id)
						if !emit(Event{Kind: Down, Name: name, Node: id, At: time.Now(), Err: fmt.Errorf("%w: %s released %q", ErrPeerGone, id, name)}) {
							return
						}
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-n.ctx.Done():
				return
			case e := <-downs:
				if live[e.Node] != nil && live[e.Node].isClosed() {
					delete(live, e.Node)
					if !emit(e) {
						return
					}
				}
			case _, ok := <-changes:
				if !ok {
					changes = nil
				}
			case <-t.C:
			}
		}
	}()
	return out, nil
}
