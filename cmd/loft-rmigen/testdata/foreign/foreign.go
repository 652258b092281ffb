// Package foreign declares a remote interface that package basic uses
// as a parameter: an interface of another package, registered there.
package foreign

import (
	"context"
	"time"
)

//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type Clock -output clock_rmi.go

// Clock tells the time of its home.
type Clock interface {
	Now(ctx context.Context) (time.Time, error)
}
