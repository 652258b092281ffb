package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// listed is one package as reported by go list.
type listed struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	CgoFiles   []string
	Export     string
	ImportMap  map[string]string
	DepOnly    bool
	Error      *struct{ Err string }
}

// loaded is the package loft-rmigen generates for, type-checked.
type loaded struct {
	out   string // the file to write
	fset  *token.FileSet
	pkg   *types.Package
	dir   string
	files []*ast.File
	imp   types.Importer
	info  *types.Info
	errs  []error // type errors, reported only if they touch the interfaces
}

// load lists the package named by patterns (resolved in dir, with build
// tags) and its dependencies with go list, then type-checks its source
// files but the one to write (output names it from the package's
// directory and name): its stale contents must not matter. Dependencies come from the export data go list
// builds, or, when one does not build, from its source with function
// bodies ignored.
func load(dir, tags string, patterns []string, output func(dir, name string) string) (*loaded, error) {
	args := []string{"list", "-e", "-export", "-deps",
		"-json=ImportPath,Name,Dir,GoFiles,CgoFiles,Export,ImportMap,DepOnly,Error"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	// rmi is listed too: the generated file imports it, the package may
	// not yet.
	args = append(args, "--")
	args = append(args, patterns...)
	args = append(args, rmiPath)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("go list: %v\n%s", err, strings.TrimSpace(stderr.String()))
	}
	byPath := map[string]*listed{}
	var targets []*listed
	for d := json.NewDecoder(bytes.NewReader(out)); ; {
		p := new(listed)
		if err := d.Decode(p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list: %v", err)
		}
		byPath[p.ImportPath] = p
		if !p.DepOnly {
			targets = append(targets, p)
		}
	}
	if len(targets) > 1 {
		targets = slices.DeleteFunc(targets, func(p *listed) bool { return p.ImportPath == rmiPath })
	}
	if len(targets) != 1 {
		var names []string
		for _, t := range targets {
			names = append(names, t.ImportPath)
		}
		return nil, fmt.Errorf("the arguments %q name %d packages (%s); give one directory", patterns, len(targets), strings.Join(names, ", "))
	}
	t := targets[0]
	if len(t.GoFiles)+len(t.CgoFiles) == 0 {
		if t.Error != nil {
			return nil, fmt.Errorf("go list: %s", strings.TrimSpace(t.Error.Err))
		}
		return nil, fmt.Errorf("%s: no Go files", t.ImportPath)
	}

	l := &loaded{fset: token.NewFileSet(), dir: t.Dir, out: output(t.Dir, t.Name)}
	im := &imp{fset: l.fset, byPath: byPath, done: map[string]*types.Package{}}
	im.gc = importer.ForCompiler(l.fset, "gc", im.lookup).(types.ImporterFrom)
	for _, name := range append(append([]string(nil), t.GoFiles...), t.CgoFiles...) {
		path := filepath.Join(t.Dir, name)
		if path == l.out {
			continue
		}
		f, err := parser.ParseFile(l.fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		l.files = append(l.files, f)
	}
	if len(l.files) == 0 {
		return nil, fmt.Errorf("%s: no Go files but the one to generate", t.ImportPath)
	}
	l.info = &types.Info{
		Defs:      map[*ast.Ident]types.Object{},
		Uses:      map[*ast.Ident]types.Object{},
		Instances: map[*ast.Ident]types.Instance{},
	}
	l.imp = im.from(t)
	conf := types.Config{
		Importer:    l.imp,
		FakeImportC: true,
		Error:       func(err error) { l.errs = append(l.errs, err) },
	}
	l.pkg, _ = conf.Check(t.ImportPath, l.fset, l.files, l.info)
	return l, nil
}

// verify type-checks the package with src as the file l.out and returns
// the errors found in src: none, unless loft-rmigen has a bug.
func (l *loaded) verify(src []byte) error {
	f, err := parser.ParseFile(l.fset, l.out, src, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	var errs []string
	conf := types.Config{
		Importer:    l.imp,
		FakeImportC: true,
		Error: func(err error) {
			if te, ok := err.(types.Error); ok && te.Fset.Position(te.Pos).Filename == l.out {
				errs = append(errs, err.Error())
			}
		},
	}
	conf.Check(l.pkg.Path(), l.fset, append(append([]*ast.File(nil), l.files...), f), nil)
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// imp imports packages from export data, or from source for those whose
// export data go list could not build.
type imp struct {
	fset   *token.FileSet
	byPath map[string]*listed
	done   map[string]*types.Package // checked from source
	gc     types.ImporterFrom
}

// importerFunc adapts a function to types.Importer.
type importerFunc func(path string) (*types.Package, error)

func (f importerFunc) Import(path string) (*types.Package, error) { return f(path) }

// from returns the importer for the imports of package p, which resolves
// p's import paths through its ImportMap (vendoring).
func (im *imp) from(p *listed) types.Importer {
	return importerFunc(func(path string) (*types.Package, error) {
		if m, ok := p.ImportMap[path]; ok {
			path = m
		}
		return im.importPath(path)
	})
}

func (im *imp) importPath(path string) (*types.Package, error) {
	if path == "unsafe" {
		return types.Unsafe, nil
	}
	if pkg := im.done[path]; pkg != nil {
		return pkg, nil
	}
	p := im.byPath[path]
	if p == nil {
		return nil, fmt.Errorf("go list did not report package %q", path)
	}
	if p.Export != "" {
		return im.gc.ImportFrom(path, p.Dir, 0)
	}
	if len(p.GoFiles)+len(p.CgoFiles) == 0 {
		if p.Error != nil {
			return nil, errors.New(strings.TrimSpace(p.Error.Err))
		}
		return nil, fmt.Errorf("package %q has no Go files", path)
	}
	var files []*ast.File
	for _, name := range append(append([]string(nil), p.GoFiles...), p.CgoFiles...) {
		f, err := parser.ParseFile(im.fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	conf := types.Config{
		Importer:         im.from(p),
		FakeImportC:      true,
		IgnoreFuncBodies: true,
		Error:            func(error) {}, // keep going: only declarations matter here
	}
	pkg, _ := conf.Check(path, im.fset, files, nil)
	im.done[path] = pkg
	return pkg, nil
}

// lookup opens the export data of a package for the gc importer.
func (im *imp) lookup(path string) (io.ReadCloser, error) {
	p := im.byPath[path]
	if p == nil || p.Export == "" {
		return nil, fmt.Errorf("no export data for %q", path)
	}
	return os.Open(p.Export)
}
