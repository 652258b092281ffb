package main

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/token"
	"go/types"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

const rmiPath = "github.com/loft-ipc/loft/rmi"

// proxy is one remote interface and the proxy written for it.
type proxy struct {
	name    string // the interface
	typ     *types.Named
	proxy   string // the proxy type
	methods []*method
}

type method struct {
	name    string
	params  []param // the context first
	groups  []int   // how many consecutive params share one type
	results []string
}

type param struct{ name, typ string }

// gen writes the proxies of the named interfaces of one package.
type gen struct {
	l       *loaded
	names   []string // from -type
	listed  map[*types.Named]bool
	reg     map[types.Type]bool         // interfaces registered in the package's other files
	funcs   map[token.Pos]*ast.FuncType // interface methods declared in the package, by name position
	imports map[string]string           // path -> name used in the generated file
	used    map[string]string           // name -> path
	errs    []string
	rmi     string // "rmi." or "" inside package rmi
}

// errorList is the list of every problem found, one per line.
type errorList []string

func (e errorList) Error() string { return strings.Join(e, "\n") }

// generate returns the gofmt'ed source of the proxies of the interfaces
// names in package l, or every problem that prevents writing them.
func generate(l *loaded, names []string, cmdline string) ([]byte, error) {
	g := &gen{l: l, names: names, listed: map[*types.Named]bool{}, reg: map[types.Type]bool{},
		funcs: map[token.Pos]*ast.FuncType{}, imports: map[string]string{}, used: map[string]string{}}
	var proxies []*proxy
	for _, n := range names {
		p, err := g.lookup(n)
		if err != nil {
			g.errs = append(g.errs, err.Error())
			continue
		}
		if g.listed[p.typ] {
			g.errs = append(g.errs, fmt.Sprintf("-type lists %s twice", n))
			continue
		}
		g.listed[p.typ] = true
		proxies = append(proxies, p)
	}
	if len(g.errs) > 0 {
		return nil, errorList(g.errs)
	}
	g.scan()
	if l.pkg.Path() == rmiPath {
		g.rmi = ""
	} else {
		g.rmi = g.qualify(types.NewPackage(rmiPath, "rmi")) + "."
	}
	for _, p := range proxies {
		g.methods(p)
	}
	if len(g.errs) > 0 {
		if bad := g.typeErrors(); bad != "" {
			g.errs = append(g.errs, bad)
		}
		return nil, errorList(g.errs)
	}
	return g.write(proxies, cmdline)
}

// lookup finds the interface n in the package.
func (g *gen) lookup(n string) (*proxy, error) {
	obj := g.l.pkg.Scope().Lookup(n)
	if obj == nil {
		return nil, fmt.Errorf("-type %s: no such type in package %s", n, g.l.pkg.Path())
	}
	tn, ok := obj.(*types.TypeName)
	if !ok {
		return nil, fmt.Errorf("%s: -type %s: not a type", g.pos(obj.Pos()), n)
	}
	if tn.IsAlias() {
		return nil, fmt.Errorf("%s: -type %s: an alias; list the interface it names where it is declared", g.pos(obj.Pos()), n)
	}
	named, ok := tn.Type().(*types.Named)
	if !ok {
		return nil, fmt.Errorf("%s: -type %s: not a defined type", g.pos(obj.Pos()), n)
	}
	if _, ok := named.Underlying().(*types.Interface); !ok {
		return nil, fmt.Errorf("%s: -type %s: not an interface (it is %s)", g.pos(obj.Pos()), n, named.Underlying())
	}
	if named.TypeParams().Len() > 0 {
		return nil, fmt.Errorf("%s: -type %s: a generic interface; rmi registers only non-generic interfaces", g.pos(obj.Pos()), n)
	}
	p := &proxy{name: n, typ: named, proxy: lowerFirst(n) + "Proxy"}
	if o := g.l.pkg.Scope().Lookup(p.proxy); o != nil {
		return nil, fmt.Errorf("%s: %s is already declared; loft-rmigen writes the proxy of %s under that name: delete a hand-written one, or rename the declaration", g.pos(o.Pos()), p.proxy, n)
	}
	return p, nil
}

// scan records the registrations (rmi.Register[T] calls) and the
// declarations of interface methods found in the package's files.
func (g *gen) scan() {
	for id, inst := range g.l.info.Instances {
		if f, ok := g.l.info.Uses[id].(*types.Func); ok && f.Name() == "Register" && f.Pkg() != nil && f.Pkg().Path() == rmiPath && inst.TypeArgs.Len() == 1 {
			g.reg[inst.TypeArgs.At(0)] = true
		}
	}
	for _, f := range g.l.files {
		ast.Inspect(f, func(n ast.Node) bool {
			it, ok := n.(*ast.InterfaceType)
			if !ok {
				return true
			}
			for _, m := range it.Methods.List {
				if ft, ok := m.Type.(*ast.FuncType); ok {
					for _, name := range m.Names {
						g.funcs[name.Pos()] = ft
					}
				}
			}
			return true
		})
	}
}

// methods checks the methods of p's interface and renders them.
func (g *gen) methods(p *proxy) {
	for _, f := range g.sourceOrder(p.typ.Underlying().(*types.Interface)) {
		where := fmt.Sprintf("%s: %s.%s", g.pos(f.Pos()), p.name, f.Name())
		if !f.Exported() {
			g.errf("%s: unexported method: rmi calls methods by reflection, which reaches exported methods only", where)
			continue
		}
		if f.Name() == "Delegate" {
			g.errf("%s: a method named Delegate collides with the *rmi.Delegate the proxy embeds; rename it", where)
			continue
		}
		sig := f.Signature()
		ps, rs := sig.Params(), sig.Results()
		shape := "rmi methods are func(ctx context.Context, args...) (results..., error)"
		if sig.Variadic() {
			g.errf("%s: variadic: %s with a fixed number of arguments (pass a slice)", where, shape)
			continue
		}
		if ps.Len() == 0 || !isContext(ps.At(0).Type()) {
			g.errf("%s: the first parameter must be a context.Context: %s", where, shape)
			continue
		}
		if rs.Len() == 0 || !types.Identical(rs.At(rs.Len()-1).Type(), types.Universe.Lookup("error").Type()) {
			g.errf("%s: the last result must be an error: %s", where, shape)
			continue
		}
		if rs.Len() > 3 {
			g.errf("%s: %d results before the error; rmi carries at most 2 (rmi.Call0, Call1, Call2): return a struct", where, rs.Len()-1)
			continue
		}
		m := &method{name: f.Name()}
		bad := false
		for j := 1; j < ps.Len(); j++ {
			v := ps.At(j)
			if why := g.carry(v.Type(), true, map[types.Type]bool{}); why != "" {
				g.errf("%s: parameter %s (%s): %s", where, describe(v.Name(), j), g.typeString(v.Type()), why)
				bad = true
			}
		}
		for j := 0; j < rs.Len()-1; j++ {
			v := rs.At(j)
			if why := g.carry(v.Type(), true, map[types.Type]bool{}); why != "" {
				g.errf("%s: result %d (%s): %s", where, j+1, g.typeString(v.Type()), why)
				bad = true
			}
		}
		if bad {
			continue
		}
		// The body names the rmi package, the receiver and the result
		// types: parameters must not shadow any of them.
		reserved := map[string]bool{"p": true, strings.TrimSuffix(g.rmi, "."): true}
		for j := 0; j < rs.Len()-1; j++ {
			s := g.typeString(rs.At(j).Type())
			m.results = append(m.results, s)
			for _, id := range idents(s) {
				reserved[id] = true
			}
		}
		taken := map[string]bool{}
		for j := range ps.Len() {
			v := ps.At(j)
			name := v.Name()
			if name == "" || name == "_" || reserved[name] || taken[name] {
				name = "arg" + strconv.Itoa(j)
				if j == 0 {
					name = "ctx"
				}
				for k := 2; reserved[name] || taken[name]; k++ {
					name = fmt.Sprintf("%s%d", strings.TrimRight(name, "0123456789"), k)
				}
			}
			taken[name] = true
			m.params = append(m.params, param{name: name, typ: g.typeString(v.Type())})
		}
		m.groups = g.groups(f, ps.Len())
		p.methods = append(p.methods, m)
	}
}

// sourceOrder returns the methods of it in the order of their
// declarations (go/types sorts them by name): those of this package
// first, then by package path and file position.
func (g *gen) sourceOrder(it *types.Interface) []*types.Func {
	var fs []*types.Func
	for i := range it.NumMethods() {
		fs = append(fs, it.Method(i))
	}
	key := func(f *types.Func) (bool, string, string, int, int) {
		ps := g.l.fset.Position(f.Pos())
		path := ""
		if f.Pkg() != nil {
			path = f.Pkg().Path()
		}
		return f.Pkg() != g.l.pkg, path, ps.Filename, ps.Line, ps.Column
	}
	sort.SliceStable(fs, func(i, j int) bool {
		ai, bi, ci, di, ei := key(fs[i])
		aj, bj, cj, dj, ej := key(fs[j])
		switch {
		case ai != aj:
			return !ai
		case bi != bj:
			return bi < bj
		case ci != cj:
			return ci < cj
		case di != dj:
			return di < dj
		}
		return ei < ej
	})
	return fs
}

// groups returns how the method's parameters were grouped in its
// declaration ("done, total int" is one group of 2), so that the proxy
// reads as its interface does; one group per parameter when the
// declaration is not in this package.
func (g *gen) groups(f *types.Func, n int) []int {
	var gs []int
	if ft := g.funcs[f.Pos()]; ft != nil && ft.Params != nil {
		sum := 0
		for _, fld := range ft.Params.List {
			k := max(len(fld.Names), 1)
			gs = append(gs, k)
			sum += k
		}
		if sum == n {
			return gs
		}
	}
	gs = gs[:0]
	for range n {
		gs = append(gs, 1)
	}
	return gs
}

// isContext reports whether t is context.Context.
func isContext(t types.Type) bool {
	n, ok := types.Unalias(t).(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "context" && n.Obj().Name() == "Context"
}

// isRemote reports whether interface type n is a remote interface: one of
// -type, one registered in the package, or one of another package whose
// methods all have the remote shape (its own package registers it).
func (g *gen) isRemote(n *types.Named) bool {
	if g.listed[n] || g.reg[n] {
		return true
	}
	return n.Obj().Pkg() != g.l.pkg && remoteShape(n)
}

// remoteShape reports whether every method of interface n has the shape
// rmi requires, and there is at least one.
func remoteShape(n *types.Named) bool {
	it, ok := n.Underlying().(*types.Interface)
	if !ok || it.NumMethods() == 0 {
		return false
	}
	for i := range it.NumMethods() {
		f := it.Method(i)
		sig := f.Signature()
		ps, rs := sig.Params(), sig.Results()
		if !f.Exported() || sig.Variadic() || ps.Len() == 0 || rs.Len() == 0 {
			return false
		}
		if !isContext(ps.At(0).Type()) || !types.Identical(rs.At(rs.Len()-1).Type(), types.Universe.Lookup("error").Type()) {
			return false
		}
	}
	return true
}

// carry returns why rmi cannot carry a value of type t as a parameter or
// result ("" if it can): remote interfaces travel by reference, only as
// direct parameters and results (top); everything else is CBOR-encoded.
func (g *gen) carry(t types.Type, top bool, seen map[types.Type]bool) string {
	t = types.Unalias(t)
	if seen[t] {
		return ""
	}
	switch t := t.(type) {
	case *types.Named:
		if it, ok := t.Underlying().(*types.Interface); ok {
			switch {
			case it.NumMethods() == 0:
				return "" // like any
			case g.isRemote(t) && top:
				return ""
			case g.isRemote(t):
				return fmt.Sprintf("the remote interface %s inside another type: rmi passes references only as direct parameters and results", g.typeString(t))
			case t.Obj().Pkg() == nil && t.Obj().Name() == "error":
				return "an error travels only as the last result (carry its text in a string or a struct)"
			case t.Obj().Pkg() == g.l.pkg && remoteShape(t):
				return fmt.Sprintf("%s is not registered: add it to -type so that it travels by reference", t.Obj().Name())
			default:
				return fmt.Sprintf("the interface %s is not a remote interface, and CBOR cannot decode into an interface with methods (use a concrete type, any, or a remote interface)", g.typeString(t))
			}
		}
		seen[t] = true
		if hasMethod(t, "MarshalCBOR") || hasMethod(t, "MarshalBinary") {
			return "" // encodes itself
		}
		return g.carry(t.Underlying(), top, seen)
	case *types.Basic:
		switch t.Kind() {
		case types.Complex64, types.Complex128:
			return "CBOR cannot encode complex numbers"
		case types.Uintptr, types.UnsafePointer:
			return "CBOR cannot encode pointers as numbers"
		}
		return ""
	case *types.Interface:
		if t.NumMethods() == 0 {
			return ""
		}
		return "CBOR cannot decode into an interface with methods (use a concrete type, any, or a named remote interface)"
	case *types.Pointer:
		return in(g.carry(t.Elem(), false, seen), "the pointed-to value")
	case *types.Slice:
		return in(g.carry(t.Elem(), false, seen), "an element")
	case *types.Array:
		return in(g.carry(t.Elem(), false, seen), "an element")
	case *types.Map:
		if why := g.carry(t.Key(), false, seen); why != "" {
			return in(why, "a key")
		}
		return in(g.carry(t.Elem(), false, seen), "a value")
	case *types.Struct:
		for i := range t.NumFields() {
			f := t.Field(i)
			_, isStruct := types.Unalias(derefType(f.Type())).Underlying().(*types.Struct)
			if !f.Exported() && !(f.Embedded() && isStruct) {
				continue // not encoded
			}
			tag := reflect.StructTag(t.Tag(i))
			name := tag.Get("cbor")
			if name == "" {
				name = tag.Get("json")
			}
			if name == "-" {
				continue
			}
			if why := g.carry(f.Type(), false, seen); why != "" {
				return in(why, "field "+f.Name())
			}
		}
		return ""
	case *types.Chan:
		return "CBOR cannot encode channels"
	case *types.Signature:
		return "CBOR cannot encode functions"
	}
	return fmt.Sprintf("rmi cannot carry %s", t)
}

func derefType(t types.Type) types.Type {
	if p, ok := types.Unalias(t).(*types.Pointer); ok {
		return p.Elem()
	}
	return t
}

// in prefixes a reason with where it was found.
func in(why, where string) string {
	if why == "" {
		return ""
	}
	return where + ": " + why
}

func hasMethod(t types.Type, name string) bool {
	ms := types.NewMethodSet(types.NewPointer(t))
	for i := range ms.Len() {
		if ms.At(i).Obj().Name() == name {
			return true
		}
	}
	return false
}

func describe(name string, i int) string {
	if name == "" || name == "_" {
		return "#" + strconv.Itoa(i)
	}
	return name
}

// typeString spells t in the generated file, importing what it needs.
func (g *gen) typeString(t types.Type) string {
	return types.TypeString(t, func(p *types.Package) string {
		if p == g.l.pkg {
			return ""
		}
		return g.qualify(p)
	})
}

// qualify returns the name under which the generated file imports p:
// its package name, unless a declaration of the package or another
// import already uses it.
func (g *gen) qualify(p *types.Package) string {
	if n, ok := g.imports[p.Path()]; ok {
		return n
	}
	base := p.Name()
	n := base
	for k := 2; g.used[n] != "" || g.l.pkg.Scope().Lookup(n) != nil; k++ {
		n = base + strconv.Itoa(k)
	}
	g.imports[p.Path()] = n
	g.used[n] = p.Path()
	return n
}

// typeErrors returns the type errors of the package, if any, when some
// problem was found: they may well be its cause.
func (g *gen) typeErrors() string {
	if len(g.l.errs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("the package has type errors:")
	for i, e := range g.l.errs {
		if i == 5 {
			fmt.Fprintf(&b, "\n\t... and %d more", len(g.l.errs)-i)
			break
		}
		b.WriteString("\n\t" + e.Error())
	}
	return b.String()
}

func (g *gen) errf(format string, args ...any) { g.errs = append(g.errs, fmt.Sprintf(format, args...)) }

// pos prints a position relative to the package directory.
func (g *gen) pos(p token.Pos) string {
	if !p.IsValid() {
		return g.l.pkg.Path()
	}
	ps := g.l.fset.Position(p)
	if strings.HasPrefix(ps.Filename, g.l.dir+"/") {
		ps.Filename = ps.Filename[len(g.l.dir)+1:]
	}
	return ps.String()
}

// write renders the file.
func (g *gen) write(ps []*proxy, cmdline string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by %s; DO NOT EDIT.\n\n", cmdline)
	fmt.Fprintf(&b, "package %s\n\n", g.l.pkg.Name())
	var std, other []string
	for path, name := range g.imports {
		spec := strconv.Quote(path)
		if name != lastElem(path) {
			spec = name + " " + spec
		}
		if strings.Contains(strings.SplitN(path, "/", 2)[0], ".") {
			other = append(other, spec)
		} else {
			std = append(std, spec)
		}
	}
	sort.Strings(std)
	sort.Strings(other)
	b.WriteString("import (\n")
	for _, s := range std {
		b.WriteString("\t" + s + "\n")
	}
	if len(std) > 0 && len(other) > 0 {
		b.WriteString("\n")
	}
	for _, s := range other {
		b.WriteString("\t" + s + "\n")
	}
	b.WriteString(")\n")
	for _, p := range ps {
		fmt.Fprintf(&b, "\n// %s is the proxy of a remote %s. Its methods call the\n// object's home through the embedded delegate.\n", p.proxy, p.name)
		fmt.Fprintf(&b, "type %s struct{ *%sDelegate }\n", p.proxy, g.rmi)
		for _, m := range p.methods {
			fmt.Fprintf(&b, "\nfunc (p %s) %s(%s) %s {\n", p.proxy, m.name, m.paramList(), m.resultList())
			var call string
			switch len(m.results) {
			case 0:
				call = g.rmi + "Call0"
			case 1:
				call = fmt.Sprintf("%sCall1[%s]", g.rmi, m.results[0])
			case 2:
				call = fmt.Sprintf("%sCall2[%s, %s]", g.rmi, m.results[0], m.results[1])
			}
			args := []string{m.params[0].name, "p.Delegate", strconv.Quote(m.name)}
			for _, a := range m.params[1:] {
				args = append(args, a.name)
			}
			fmt.Fprintf(&b, "\treturn %s(%s)\n}\n", call, strings.Join(args, ", "))
		}
	}
	b.WriteString("\n// init registers the remote interfaces with their proxies, and the stubs\n// that dispatch incoming calls without reflection.\nfunc init() {\n")
	for _, p := range ps {
		fmt.Fprintf(&b, "\t%sRegister(func(d *%sDelegate) %s { return %s{d} }, %sStubs[%s]{\n", g.rmi, g.rmi, p.name, p.proxy, g.rmi, p.name)
		for _, m := range p.methods {
			g.writeStub(&b, p, m)
		}
		b.WriteString("\t})\n")
	}
	b.WriteString("}\n")
	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("internal error: generated code does not parse: %v\n%s", err, b.Bytes())
	}
	return src, nil
}

// writeStub writes the stub of method m: decode the arguments, call the
// method, encode the results.
func (g *gen) writeStub(b *bytes.Buffer, p *proxy, m *method) {
	// The body names the rmi package and the parameter and result types:
	// its variables must not shadow any of them.
	reserved := map[string]bool{strings.TrimSuffix(g.rmi, "."): true}
	for _, a := range m.params {
		for _, id := range idents(a.typ) {
			reserved[id] = true
		}
	}
	for _, r := range m.results {
		for _, id := range idents(r) {
			reserved[id] = true
		}
	}
	pick := func(base string) string {
		n := base
		for k := 2; reserved[n]; k++ {
			n = base + "_" + strconv.Itoa(k)
		}
		reserved[n] = true
		return n
	}
	ctx, obj, c, err := pick("ctx"), pick("obj"), pick("c"), pick("err")
	fmt.Fprintf(b, "\t\t%q: func(%s %s, %s %s, %s *%sServed) error {\n", m.name, ctx, m.params[0].typ, obj, p.name, c, g.rmi)
	args := []string{ctx}
	for i, a := range m.params[1:] {
		v := pick("a" + strconv.Itoa(i+1))
		args = append(args, v)
		fmt.Fprintf(b, "\t\t\t%s, %s := %sArg[%s](%s)\n\t\t\tif %s != nil {\n\t\t\t\treturn %s\n\t\t\t}\n", v, err, g.rmi, a.typ, c, err, err)
	}
	callExpr := fmt.Sprintf("%s.%s(%s)", obj, m.name, strings.Join(args, ", "))
	if len(m.results) == 0 {
		fmt.Fprintf(b, "\t\t\treturn %s\n\t\t},\n", callExpr)
		return
	}
	var rs []string
	for i := range m.results {
		rs = append(rs, pick("r"+strconv.Itoa(i)))
	}
	fmt.Fprintf(b, "\t\t\t%s, %s := %s\n\t\t\tif %s != nil {\n\t\t\t\treturn %s\n\t\t\t}\n", strings.Join(rs, ", "), err, callExpr, err, err)
	for _, r := range rs[:len(rs)-1] {
		fmt.Fprintf(b, "\t\t\tif %s := %sResult(%s, %s); %s != nil {\n\t\t\t\treturn %s\n\t\t\t}\n", err, g.rmi, c, r, err, err)
	}
	fmt.Fprintf(b, "\t\t\treturn %sResult(%s, %s)\n\t\t},\n", g.rmi, c, rs[len(rs)-1])
}

func (m *method) paramList() string {
	var parts []string
	i := 0
	for _, n := range m.groups {
		var names []string
		for k := range n {
			names = append(names, m.params[i+k].name)
		}
		// A group of the declaration keeps its parameters together only
		// if the proxy spells them with one type (it always should).
		same := true
		for k := 1; k < n; k++ {
			same = same && m.params[i+k].typ == m.params[i].typ
		}
		if same {
			parts = append(parts, strings.Join(names, ", ")+" "+m.params[i].typ)
		} else {
			for k := range n {
				parts = append(parts, m.params[i+k].name+" "+m.params[i+k].typ)
			}
		}
		i += n
	}
	return strings.Join(parts, ", ")
}

func (m *method) resultList() string {
	if len(m.results) == 0 {
		return "error"
	}
	return "(" + strings.Join(m.results, ", ") + ", error)"
}

// lowerFirst turns an interface name into the start of its proxy's:
// File → file, HTTPServer → httpServer, ID → id.
func lowerFirst(s string) string {
	r := []rune(s)
	n := 0
	for n < len(r) && unicode.IsUpper(r[n]) {
		n++
	}
	if n > 1 && n < len(r) {
		n-- // keep the capital that starts the next word
	}
	for i := range n {
		r[i] = unicode.ToLower(r[i])
	}
	return string(r)
}

func lastElem(path string) string { return path[strings.LastIndex(path, "/")+1:] }

// idents returns the identifiers in a type expression.
func idents(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_') })
}
