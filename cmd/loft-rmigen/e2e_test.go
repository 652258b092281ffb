package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGoGenerate is what a user does: in a module that requires loft
// (replaced by this directory), go generate runs loft-rmigen with go run,
// and the package, generated files included, passes go vet and builds.
// go.sum is this module's, so the modules are those this module builds
// with, already in the module cache.
func TestGoGenerate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module")
	}
	files := map[string]string{}
	for _, name := range []string{"basic/basic.go", "clash/clash.go"} {
		src, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = string(src)
	}
	files["use/main.go"] = `package main

import (
	"fmt"

	"example.com/bad/basic"
)

func main() { var s basic.Store; fmt.Println(s == nil) }
`
	dir := tempModule(t, files)
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod -buildvcs=false")
	for _, args := range [][]string{{"generate", "./..."}, {"vet", "./..."}, {"build", "-o", os.DevNull, "./use"}} {
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// The files written are the golden ones (but for the package path).
	for _, name := range []string{"basic/basic_rmi.go", "basic/logger_rmi.go", "clash/clash_rmi.go"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%s differs from testdata/%s:\n%s", name, name, firstDiff(got, want))
		}
	}
}
