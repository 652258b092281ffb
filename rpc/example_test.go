package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

type SumReq struct{ A, B int }
type SumResp struct{ Sum int }

func Example() {
	ctx := context.Background()
	tmp, _ := os.MkdirTemp("", "loft-example-")
	defer os.RemoveAll(tmp)
	node, err := loft.Open(ctx, loft.Options{Dir: filepath.Join(tmp, "rt")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()

	// The server side (usually another process).
	srv, _ := rpc.NewServer(node, "calc", rpc.ServerOptions{})
	rpc.Register(srv, "Add", func(ctx context.Context, r SumReq) (SumResp, error) {
		return SumResp{Sum: r.A + r.B}, nil
	})
	rpc.Register(srv, "Div", func(ctx context.Context, r SumReq) (SumResp, error) {
		if r.B == 0 {
			return SumResp{}, rpc.Errorf(rpc.InvalidArgument, "division by zero")
		}
		return SumResp{Sum: r.A / r.B}, nil
	})
	if err := srv.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	// The client side.
	cli, _ := rpc.Dial(ctx, node, "calc", rpc.ClientOptions{})
	defer cli.Close()
	r, err := rpc.Call[SumReq, SumResp](ctx, cli, "Add", SumReq{A: 1, B: 2})
	fmt.Println(r.Sum, err)

	_, err = rpc.Call[SumReq, SumResp](ctx, cli, "Div", SumReq{A: 1})
	fmt.Println(errors.Is(err, rpc.InvalidArgument), err)

	f := rpc.Go[SumReq, SumResp](ctx, cli, "Add", SumReq{A: 20, B: 22})
	r, err = f.Wait(ctx)
	fmt.Println(r.Sum, err)

	out, err := cli.CallJSON(ctx, "Add", []byte(`{"A": 5, "B": 6}`))
	fmt.Println(string(out), err)
	// Output:
	// 3 <nil>
	// true rpc calc.Div: invalid argument: division by zero
	// 42 <nil>
	// {"Sum":11} <nil>
}
