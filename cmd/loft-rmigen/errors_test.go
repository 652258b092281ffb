package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tempModule writes a module example.com/bad that requires this one
// (replaced by its directory, with its requirements and go.sum copied, so
// that nothing is downloaded) and holds files, and returns its directory.
func tempModule(t *testing.T, files map[string]string) string {
	t.Helper()
	root := moduleRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	// Keep the go line and the requirements, rename the module.
	_, rest, _ := strings.Cut(string(gomod), "\n")
	dir := t.TempDir()
	files["go.mod"] = "module example.com/bad\n" + rest +
		"\nrequire github.com/loft-ipc/loft v0.0.0-00010101000000-000000000000\n" +
		"\nreplace github.com/loft-ipc/loft => " + root + "\n"
	files["go.sum"] = string(gosum)
	for name, s := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tempPackage writes a module holding one package with the given source
// (after a package clause and the imports context, io and time) and
// returns its directory.
func tempPackage(t *testing.T, src string) string {
	t.Helper()
	return tempModule(t, map[string]string{
		"bad.go": "package bad\n\nimport (\n\t\"context\"\n\t\"io\"\n\t\"time\"\n)\n\nvar _ io.Reader\nvar _ time.Time\nvar _ context.Context\n\n" + src,
	})
}

// TestErrors: a signature rmi cannot carry is refused, with the position,
// the method and the reason, and nothing is written.
func TestErrors(t *testing.T) {
	cases := []struct {
		name, src, types string
		want             []string
	}{
		{"no context", "type R interface{ M(n int) error }", "R",
			[]string{"bad.go:13:19: R.M: the first parameter must be a context.Context"}},
		{"context second", "type R interface{ M(n int, ctx context.Context) error }", "R",
			[]string{"R.M: the first parameter must be a context.Context"}},
		{"no error", "type R interface{ M(ctx context.Context) int }", "R",
			[]string{"R.M: the last result must be an error"}},
		{"error first", "type R interface{ M(ctx context.Context) (error, int) }", "R",
			[]string{"R.M: the last result must be an error"}},
		{"variadic", "type R interface{ M(ctx context.Context, xs ...int) error }", "R",
			[]string{"R.M: variadic"}},
		{"three results", "type R interface{ M(ctx context.Context) (int, int, int, error) }", "R",
			[]string{"R.M: 3 results before the error; rmi carries at most 2"}},
		{"channel", "type R interface{ M(ctx context.Context, c chan int) error }", "R",
			[]string{"R.M: parameter c (chan int): CBOR cannot encode channels"}},
		{"function result", "type R interface{ M(ctx context.Context) (func(), error) }", "R",
			[]string{"R.M: result 1 (func()): CBOR cannot encode functions"}},
		{"complex", "type R interface{ M(ctx context.Context, _ complex128) error }", "R",
			[]string{"R.M: parameter #1 (complex128): CBOR cannot encode complex numbers"}},
		{"uintptr", "type R interface{ M(ctx context.Context, u uintptr) error }", "R",
			[]string{"parameter u (uintptr): CBOR cannot encode pointers as numbers"}},
		{"interface with methods", "type R interface{ M(ctx context.Context, r io.Reader) error }", "R",
			[]string{"parameter r (io.Reader): the interface io.Reader is not a remote interface"}},
		{"error parameter", "type R interface{ M(ctx context.Context, e error) error }", "R",
			[]string{"parameter e (error): an error travels only as the last result"}},
		{"literal interface", "type R interface{ M(ctx context.Context, x interface{ F() }) error }", "R",
			[]string{"CBOR cannot decode into an interface with methods"}},
		{"remote in a slice", "type R interface{ M(ctx context.Context, rs []R) error }", "R",
			[]string{"parameter rs ([]R): an element: the remote interface R inside another type: rmi passes references only as direct parameters and results"}},
		{"remote behind a pointer", "type R interface{ M(ctx context.Context) (*R, error) }", "R",
			[]string{"result 1 (*R): the pointed-to value: the remote interface R inside another type"}},
		{"remote in a map", "type R interface{ M(ctx context.Context, m map[string]R) error }", "R",
			[]string{"a value: the remote interface R inside another type"}},
		{"remote in a struct", "type S struct{ Next R }\ntype R interface{ M(ctx context.Context, s S) error }", "R",
			[]string{"parameter s (S): field Next: the remote interface R inside another type"}},
		{"channel in a struct", "type S struct{ In struct{ C chan int } }\ntype R interface{ M(ctx context.Context) (S, error) }", "R",
			[]string{"result 1 (S): field In: field C: CBOR cannot encode channels"}},
		{"unlisted remote interface", "type L interface{ F(ctx context.Context) error }\ntype R interface{ M(ctx context.Context, l L) error }", "R",
			[]string{"parameter l (L): L is not registered: add it to -type"}},
		{"unexported method", "type R interface{ m(ctx context.Context) error }", "R",
			[]string{"R.m: unexported method"}},
		{"method named Delegate", "type R interface{ Delegate(ctx context.Context) error }", "R",
			[]string{"R.Delegate: a method named Delegate collides with the *rmi.Delegate"}},
		{"no such type", "type R interface{ M(ctx context.Context) error }", "R,Q",
			[]string{"-type Q: no such type in package example.com/bad"}},
		{"not an interface", "type R struct{}", "R",
			[]string{"-type R: not an interface (it is struct{})"}},
		{"alias", "type I interface{ M(ctx context.Context) error }\ntype R = I", "R",
			[]string{"-type R: an alias"}},
		{"generic", "type R[T any] interface{ M(ctx context.Context, t T) error }", "R",
			[]string{"-type R: a generic interface"}},
		{"not a type", "var R = 1", "R",
			[]string{"-type R: not a type"}},
		{"listed twice", "type R interface{ M(ctx context.Context) error }", "R,R",
			[]string{"-type lists R twice"}},
		{"hand-written proxy", "type R interface{ M(ctx context.Context) error }\ntype rProxy struct{}", "R",
			[]string{"bad.go:14:6: rProxy is already declared; loft-rmigen writes the proxy of R under that name"}},
		{"every problem at once", "type R interface{\n\tA(n int) error\n\tB(ctx context.Context, c chan int) error\n\tC(ctx context.Context) int\n}", "R",
			[]string{"3 problems in example.com/bad:", "R.A: the first", "R.B: parameter c", "R.C: the last result"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := tempPackage(t, c.src)
			var stderr bytes.Buffer
			if code := run(dir, []string{"-type", c.types}, &stderr); code != 1 {
				t.Fatalf("exit status %d, want 1; stderr:\n%s", code, &stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, &stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "bad_rmi.go")); err == nil {
				t.Error("a file was written despite the errors")
			}
		})
	}
}

// TestAccepted: values CBOR carries pass the checks, including fields
// that are not encoded (unexported, or tagged "-") and types that encode
// themselves.
func TestAccepted(t *testing.T) {
	dir := tempPackage(t, `type Big struct{ n int }

func (b Big) MarshalBinary() ([]byte, error) { return nil, nil }

type S struct {
	A     []map[string]*[4]float64
	c     chan int
	F     func() `+"`cbor:\"-\"`"+`
	G     func() `+"`json:\"-\"`"+`
	B     Big
	Inner struct{ T time.Time }
	Self  *S
}

type R interface {
	M(ctx context.Context, s S, v any, m map[string]interface{}) (S, []byte, error)
}
`)
	var stderr bytes.Buffer
	if code := run(dir, []string{"-type", "R", "-check"}, &stderr); code != 1 || !strings.Contains(stderr.String(), "bad_rmi.go is missing") {
		t.Fatalf("-check on a missing file: status %d, stderr:\n%s", code, &stderr)
	}
	stderr.Reset()
	if code := run(dir, []string{"-type", "R"}, &stderr); code != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", code, &stderr)
	}
	src, err := os.ReadFile(filepath.Join(dir, "bad_rmi.go"))
	if err != nil {
		t.Fatal(err)
	}
	if want := `return rmi.Call2[S, []byte](ctx, p.Delegate, "M", s, v, m)`; !strings.Contains(string(src), want) {
		t.Errorf("the proxy lacks %q:\n%s", want, src)
	}
	if code := run(dir, []string{"-type", "R", "-check"}, &stderr); code != 0 {
		t.Fatalf("-check right after generating: status %d, stderr:\n%s", code, &stderr)
	}
	// A stale generated file does not get in the way of the next run.
	if err := os.WriteFile(filepath.Join(dir, "bad_rmi.go"), []byte("package bad\n\nfunc broken() { undefined() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run(dir, []string{"-type", "R", "-check"}, &stderr); code != 1 || !strings.Contains(stderr.String(), "out of date") {
		t.Fatalf("-check on a stale file: status %d, stderr:\n%s", code, &stderr)
	}
	stderr.Reset()
	if code := run(dir, []string{"-type", "R"}, &stderr); code != 0 {
		t.Fatalf("regenerating over a stale file: status %d; stderr:\n%s", code, &stderr)
	}
}

// TestUsage: a missing -type is a usage error.
func TestUsage(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(t.TempDir(), nil, &stderr); code != 2 || !strings.Contains(stderr.String(), "-type is required") {
		t.Fatalf("status %d, stderr:\n%s", code, &stderr)
	}
}
