// Package basic has remote interfaces of every shape loft-rmigen
// accepts; its generated files are the golden files of the tests.
package basic

import (
	"context"
	"time"

	"github.com/loft-ipc/loft/cmd/loft-rmigen/testdata/foreign"
)

//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type Logger -output logger_rmi.go
//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type Store,Item,Watcher,Tricky

// Point is a value: CBOR-encoded.
type Point struct {
	X, Y  int
	done  chan int // unexported: not encoded
	Skip  func()   `cbor:"-"`
	Label string   `json:"label"`
}

// Store has one method of each kind.
type Store interface {
	Get(ctx context.Context, key string) (Item, error)                          // a remote result
	Put(ctx context.Context, key string, value []byte) error                    // no result
	Stat(ctx context.Context) (n int, size int64, err error)                    // two results, named
	Watch(ctx context.Context, w Watcher, l Logger) error                       // remote parameters, one registered in another file
	Move(context.Context, Point, map[string][]*Point) (Point, error)            // no parameter names
	Keys(_ context.Context, prefix, suffix string, limit int) ([]string, error) // grouped parameters, a blank context
	Swap(ctx context.Context, a, b Item) (Item, Item, error)                    // two remote results
	Clock(ctx context.Context, c foreign.Clock) (time.Time, error)              // a remote interface of another package
	Echo(ctx context.Context, v any, m map[string]any) (any, error)             // empty interfaces
}

// Named is embedded in Item.
type Named interface {
	Name(ctx context.Context) (string, error)
}

// Item is a remote object with an embedded interface.
type Item interface {
	Named
	Value(ctx context.Context) ([]byte, error)
}

// Watcher is called back.
type Watcher interface {
	Changed(ctx context.Context, key string) error
}

// Logger is registered by the second go:generate line.
type Logger interface {
	Log(ctx context.Context, line string) error
}

// Tricky has parameter names that would shadow what the proxy's body uses.
type Tricky interface {
	Shadow(ctx context.Context, string string, rmi int, p bool, Item Item) (string, Item, error)
	Context(context context.Context, ctx int) (int, error)
}
