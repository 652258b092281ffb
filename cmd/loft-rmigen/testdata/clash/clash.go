// Package clash declares names that the generated file would import
// under: the generated file must import under other names.
package clash

import stdctx "context"

//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type HTTPServer

// rmi and context are taken at package level.
var rmi, context = 1, 2

// Types named as the variables of a stub would be: the stub must name
// its variables otherwise.
type (
	c   int
	obj string
	a1  []byte
	r0  struct{ N int }
)

// HTTPServer serves.
type HTTPServer interface {
	Serve(ctx stdctx.Context, n int) (int, error)
	Route(ctx stdctx.Context, x c, y obj, z a1) (r0, error)
}
