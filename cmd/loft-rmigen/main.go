// Command loft-rmigen writes the typed proxies of remote interfaces for
// package github.com/loft-ipc/loft/rmi, so that a user writes only an
// ordinary Go interface and an ordinary implementation.
//
// Put a go:generate line next to the interfaces and run go generate:
//
//	//go:generate go run github.com/loft-ipc/loft/cmd/loft-rmigen -type Dir,File
//
//	type Dir interface {
//		Open(ctx context.Context, name string) (File, error)
//	}
//
//	type File interface {
//		Read(ctx context.Context) (string, error)
//	}
//
// For each interface it writes, in <package>_rmi.go, the proxy one would
// write by hand (a struct embedding *rmi.Delegate, one method per
// interface method calling rmi.Call0, Call1 or Call2) and an init
// function that registers it with its stubs (rmi.Stubs: per method, a
// function that decodes the arguments with rmi.Arg, calls the method and
// encodes its results with rmi.Result):
//
//	type fileProxy struct{ *rmi.Delegate }
//
//	func (p fileProxy) Read(ctx context.Context) (string, error) {
//		return rmi.Call1[string](ctx, p.Delegate, "Read")
//	}
//
//	func init() {
//		rmi.Register(func(d *rmi.Delegate) File { return fileProxy{d} }, rmi.Stubs[File]{
//			"Read": func(ctx context.Context, obj File, c *rmi.Served) error {
//				r0, err := obj.Read(ctx)
//				if err != nil {
//					return err
//				}
//				return rmi.Result(c, r0)
//			},
//		})
//	}
//
// The implementation is ordinary Go: the stubs call it through its
// interface, without reflection (rmi dispatches by reflection to the
// methods of an interface registered without stubs). Outside this module, add the tool to go.mod with
// "go get -tool github.com/loft-ipc/loft/cmd/loft-rmigen" and write
// "//go:generate go tool loft-rmigen -type Dir,File".
//
// Usage:
//
//	loft-rmigen -type T1,T2 [-output file] [-tags tags] [-check] [directory]
//
// The directory (default ".", the package go generate runs in) holds one
// package; it is loaded with go list and type-checked, without the file
// being written, so a stale generated file does not get in the way.
//
// Flags:
//
//	-type    the remote interfaces, comma-separated (required)
//	-output  the file to write (default <directory>/<package name>_rmi.go)
//	-tags    build tags, as for go build
//	-check   write nothing; exit with status 1 if the file is missing or
//	         differs from what would be written (for CI)
//
// The proxy of T is named tProxy (HTTPServer: httpServerProxy); a
// declaration of that name in the package is an error (delete the
// hand-written proxy it replaces). Methods keep the order and the
// parameter names of the interface, except a name that would shadow what
// the proxy's body uses (renamed argN). Two go:generate lines in one
// package need -output for one of them; an interface one of them uses as
// a parameter or result and the other registers must be generated first.
// loft-rmigen runs the go command (go list) to find the package and the
// export data of its imports.
//
// Every method must have the shape rmi carries:
//
//	Name(ctx context.Context, args...) (results..., error)
//
// with at most two results before the error. A parameter or result is a
// remote interface (passed by reference: one of -type, one registered
// elsewhere in the package, or an interface of another package whose
// methods all have this shape, registered by that package) or a value
// CBOR can encode and decode. loft-rmigen rejects, with the position and
// the reason, and without writing anything: a method without the context
// or the error, variadic methods, more than two results, unexported
// methods, channels, functions, complex numbers, interfaces with methods
// that are not remote, error values other than the last result, and remote
// interfaces nested inside slices, maps, pointers or structs (rmi passes
// references only as direct parameters and results).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loft-rmigen:", err)
		os.Exit(1)
	}
	os.Exit(run(wd, os.Args[1:], os.Stderr))
}

// options are the command's flags and arguments.
type options struct {
	names    []string // -type
	output   string
	tags     string
	check    bool
	patterns []string // default "."
}

// parseFlags parses the command line; a usage problem is reported on
// stderr and returned as an error.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("loft-rmigen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	typeNames := fs.String("type", "", "the remote interfaces, comma-separated (required)")
	fs.StringVar(&o.output, "output", "", "the file to write (default <directory>/<package name>_rmi.go)")
	fs.StringVar(&o.tags, "tags", "", "build tags, as for go build")
	fs.BoolVar(&o.check, "check", false, "write nothing; exit with status 1 if the file is missing or out of date")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: loft-rmigen -type T1,T2 [-output file] [-tags tags] [-check] [directory]")
		fmt.Fprintln(stderr, "writes the typed proxies of the remote interfaces T1, T2 (see go doc github.com/loft-ipc/loft/cmd/loft-rmigen)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for n := range strings.SplitSeq(*typeNames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.names = append(o.names, n)
		}
	}
	if len(o.names) == 0 {
		fmt.Fprintln(stderr, "loft-rmigen: -type is required")
		fs.Usage()
		return nil, errors.New("-type is required")
	}
	o.patterns = fs.Args()
	if len(o.patterns) == 0 {
		o.patterns = []string{"."}
	}
	return o, nil
}

// run runs the command with arguments args in directory wd and returns
// the exit status: 0 done, 1 failed or out of date (-check), 2 bad usage.
func run(wd string, args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return 2
	}
	out, src, err := o.generate(wd)
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("loft-rmigen: ", err.Error()))
		return 1
	}
	if o.check {
		old, err := os.ReadFile(out)
		if err != nil {
			fmt.Fprintf(stderr, "loft-rmigen: %s is missing: run go generate\n", out)
			return 1
		}
		if !bytes.Equal(old, src) {
			fmt.Fprintf(stderr, "loft-rmigen: %s is out of date: run go generate\n", out)
			return 1
		}
		return 0
	}
	if err := os.WriteFile(out, src, 0o644); err != nil {
		fmt.Fprintln(stderr, "loft-rmigen:", err)
		return 1
	}
	return 0
}

// generate loads the package (patterns resolved in wd), generates its
// proxies and returns the path of the file to write and its contents.
func (o *options) generate(wd string) (string, []byte, error) {
	wd, err := filepath.Abs(wd)
	if err != nil {
		return "", nil, err
	}
	cmdline := "loft-rmigen -type " + strings.Join(o.names, ",")
	if o.tags != "" {
		cmdline += " -tags " + o.tags
	}
	output := o.output
	if output != "" {
		cmdline += " -output " + filepath.Base(output)
		if !filepath.IsAbs(output) {
			output = filepath.Join(wd, output)
		}
	}
	l, err := load(wd, o.tags, o.patterns, func(dir, name string) string {
		if output != "" {
			return output
		}
		return filepath.Join(dir, name+"_rmi.go")
	})
	if err != nil {
		return "", nil, err
	}
	src, err := generate(l, o.names, cmdline)
	if err != nil {
		var list errorList
		if errors.As(err, &list) && len(list) > 1 {
			err = fmt.Errorf("%d problems in %s:\n%w", len(list), l.pkg.Path(), err)
		}
		return "", nil, err
	}
	if err := l.verify(src); err != nil {
		return "", nil, fmt.Errorf("internal error: the code written for %s does not type-check (please report it):\n%v", l.pkg.Path(), err)
	}
	return l.out, src, nil
}

// prefixLines puts prefix before the first line and a tab before the others.
func prefixLines(prefix, s string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n\t")
}
