// Package rpcbench holds the echo servers and clients that loft RPC is
// measured with, next to its baselines: gRPC-go unary calls (with a
// hand-written service description and a raw-bytes codec, so no generated
// code and no protobuf encoding cost) and Go's net/rpc (gob). Each echoes
// a []byte payload. `loft bench` (package bench) and the benchmarks of
// package rpc use it; it is not meant for applications.
package rpcbench

import (
	"context"
	"fmt"
	"net"
	netrpc "net/rpc"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/rpc"
)

// Service and Method name the loft echo procedure.
const (
	Service = "bench"
	Method  = "Echo"
)

// StartLoft starts a loft RPC server of Service on node, with one method
// that returns its []byte argument.
func StartLoft(ctx context.Context, node *loft.Node) (*rpc.Server, error) {
	s, err := rpc.NewServer(node, Service, rpc.ServerOptions{MaxInFlight: 1024})
	if err != nil {
		return nil, err
	}
	if err := rpc.Register(s, Method, func(_ context.Context, b []byte) ([]byte, error) { return b, nil }); err != nil {
		return nil, err
	}
	return s, s.Start(ctx)
}

// CallLoft makes one echo call.
func CallLoft(ctx context.Context, c *rpc.Client, payload []byte) ([]byte, error) {
	return rpc.Call[[]byte, []byte](ctx, c, Method, payload)
}

// rawCodec passes *[]byte through gRPC untouched.
type rawCodec struct{}

func (rawCodec) Name() string { return "loft-bench-raw" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rpcbench: raw codec cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rpcbench: raw codec cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

const grpcMethod = "/loft.bench.Echo/Echo"

var grpcDesc = grpc.ServiceDesc{
	ServiceName: "loft.bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return &in, nil
		},
	}},
	Metadata: "rpcbench",
}

// ServeGRPC serves the gRPC echo service on l until Stop is called on the
// returned server.
func ServeGRPC(l net.Listener) *grpc.Server {
	s := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	s.RegisterService(&grpcDesc, struct{}{})
	go s.Serve(l)
	return s
}

// GRPCClient calls the gRPC echo service over one connection.
type GRPCClient struct{ cc *grpc.ClientConn }

// DialGRPC connects to a gRPC echo server: target is "unix:///path" or
// "passthrough:///host:port".
func DialGRPC(target string) (*GRPCClient, error) {
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		return nil, err
	}
	return &GRPCClient{cc: cc}, nil
}

// Call makes one echo call; the reply is appended to (*resp)[:0].
func (c *GRPCClient) Call(ctx context.Context, req []byte, resp *[]byte) error {
	return c.cc.Invoke(ctx, grpcMethod, &req, resp)
}

// Close closes the connection.
func (c *GRPCClient) Close() error { return c.cc.Close() }

// Echo is the net/rpc echo service.
type Echo struct{}

// Echo returns its argument.
func (Echo) Echo(req []byte, resp *[]byte) error {
	*resp = req
	return nil
}

// ServeNetRPC serves the net/rpc echo service on l until l is closed.
func ServeNetRPC(l net.Listener) {
	s := netrpc.NewServer()
	s.RegisterName("Echo", Echo{})
	go s.Accept(l)
}

// DialNetRPC connects to a net/rpc echo server over one connection.
func DialNetRPC(network, addr string) (*netrpc.Client, error) {
	return netrpc.Dial(network, addr)
}
