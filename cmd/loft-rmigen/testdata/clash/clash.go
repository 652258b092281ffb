// Package clash declares names that the generated file would import
// under: the generated file must import under other names.
package clash

import stdctx "context"

//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type HTTPServer

// rmi and context are taken at package level.
var rmi, context = 1, 2

// HTTPServer serves.
type HTTPServer interface {
	Serve(ctx stdctx.Context, n int) (int, error)
}
