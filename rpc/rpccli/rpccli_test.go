package rpccli_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loft-ipc/loft"
	"github.com/loft-ipc/loft/names"
	"github.com/loft-ipc/loft/rpc"
	"github.com/loft-ipc/loft/rpc/rpccli"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type AddReq struct{ A, B int }
type AddResp struct {
	Sum int `json:"sum"`
}

func TestCallAndServices(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := loft.Open(ctx, loft.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	s, err := rpc.NewServer(n, "calc", rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rpc.Register(s, "Add", func(ctx context.Context, r AddReq) (AddResp, error) { return AddResp{r.A + r.B}, nil })
	rpc.Register(s, "Fail", func(ctx context.Context, r AddReq) (AddResp, error) {
		return AddResp{}, rpc.Errorf(rpc.FailedPrecondition, "not today")
	})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	open := func(ctx context.Context) (*loft.Node, error) { return loft.Open(ctx, loft.Options{Dir: dir}) }

	run := func(args ...string) (string, error) {
		cmd := rpccli.CallCommand(open)
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}
	out, err := run("calc.Add", `{"A": 2, "B": 3}`, "--compact")
	if err != nil || out != "{\"sum\":5}\n" {
		t.Fatalf("call calc.Add: %q %v", out, err)
	}
	if _, err := run("calc.Fail"); err == nil || !strings.Contains(err.Error(), "failed precondition: not today") {
		t.Fatalf("call calc.Fail: %v", err)
	}
	if _, err := run("calc.Add", `{"C": 1}`); err == nil || !strings.Contains(err.Error(), "invalid argument") {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := run("calc"); err == nil {
		t.Fatal("call without a method succeeded")
	}
	if _, err := run("nosuch.Add", "{}", "--timeout", "50ms"); err == nil || !strings.Contains(err.Error(), "no server") {
		t.Fatalf("call of a missing service: %v", err)
	}

	reg, err := names.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	ss := rpccli.Services(ctx, n, entries, 5*time.Second)
	if len(ss) != 1 || ss[0].Service != "calc" || ss[0].Info == nil || len(ss[0].Info.Methods) != 2 {
		t.Fatalf("services: %+v", ss)
	}
	var tab bytes.Buffer
	rpccli.WriteServices(&tab, ss)
	t.Logf("\n%s", tab.String())
	if !strings.Contains(tab.String(), `calc     Add     {"A": int, "B": int}  {"sum": int}`) {
		t.Errorf("table:\n%s", tab.String())
	}
}
