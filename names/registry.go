package names

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors a caller can match with errors.Is. Returned errors wrap them with
// detail. Errors about the runtime directory's owner or mode wrap
// fs.ErrPermission instead.
var (
	// ErrInvalidName means a node ID or a name is not acceptable: IDs are
	// 1 to MaxIDLen bytes of [A-Za-z0-9._-] not starting with '.'; names
	// are valid UTF-8 of 1 to MaxNameLen bytes.
	ErrInvalidName = errors.New("names: invalid name")
	// ErrNotFound means no live node has that ID, or the lease does not
	// hold that name.
	ErrNotFound = errors.New("names: not found")
	// ErrExists means a live process already registered that node ID.
	ErrExists = errors.New("names: node ID in use")
	// ErrClosed means the Lease was closed. It also matches os.ErrClosed.
	ErrClosed = fmt.Errorf("names: lease closed: %w", os.ErrClosed)
)

// NodeInfo describes a registered node. It is stored as JSON in
// nodes/<ID>.json.
type NodeInfo struct {
	// ID names the node: 1 to MaxIDLen bytes of [A-Za-z0-9._-], not
	// starting with '.'. At most one live process holds an ID.
	ID string `json:"id"`
	// PID is the process ID of the owner. Zero means os.Getpid() when
	// registering. It is informational: liveness is the file lock.
	PID int `json:"pid"`
	// Host is the host name. Empty means os.Hostname() when registering.
	Host string `json:"host"`
	// Addrs are the node's endpoints as URLs, such as unix:///run/x.sock
	// or tcp://127.0.0.1:7070. May be empty.
	Addrs []string `json:"addrs,omitempty"`
	// Started is when the node started. Zero means the time of Register.
	Started time.Time `json:"started"`
}

// Holder is one live node bound to a name, with the metadata it bound.
type Holder struct {
	// Node is the holder's registration.
	Node NodeInfo
	// Meta is what the holder passed to Bind (nil if it passed nil).
	Meta map[string]string
}

// Entry is a name and its live holders, as listed by List.
type Entry struct {
	// Name is the bound name.
	Name string
	// Holders are its live holders, sorted by node ID; never empty.
	Holders []Holder
}

// Registry is the name service in one directory. It holds no open files
// between calls and needs no closing. A Registry is safe for concurrent
// use, and any number of processes may open the same directory.
type Registry struct {
	dir string
	// mu serializes this process's holders of the directory lock, so that
	// goroutines queue here instead of each blocking a thread in flock(2).
	mu sync.Mutex
}

// Open opens (creating if needed) the registry in dir; "" means
// DefaultDir(). The directory must belong to the effective user and have
// no group or other permission bits; otherwise Open returns an error
// wrapping fs.ErrPermission. A directory Open creates gets mode 0700.
func Open(dir string) (*Registry, error) {
	if dir == "" {
		dir = DefaultDir()
	}
	if err := ensurePrivateDir(dir); err != nil {
		return nil, err
	}
	for _, sub := range []string{nodesDir, namesDir} {
		if err := ensureSubdir(dir, sub); err != nil {
			return nil, err
		}
	}
	return &Registry{dir: dir}, nil
}

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

func (r *Registry) nodePath(id string) string {
	return filepath.Join(r.dir, nodesDir, id+fileExt)
}

func (r *Registry) nameDir(enc string) string {
	return filepath.Join(r.dir, namesDir, enc)
}

// lock takes the registry's directory lock: an exclusive flock(2) on
// <dir>/.lock. Every change to nodes/ and names/ (register, bind, unbind,
// close, garbage collection) happens under it; reads do not take it.
// The kernel drops it if the holder dies.
func (r *Registry) lock() (unlock func(), err error) {
	r.mu.Lock()
	return r.flockDir(unix.LOCK_EX)
}

// tryLock is lock without waiting: it fails if another goroutine or
// process holds the directory lock. Reads use it for collection, so that
// they never wait for other processes.
func (r *Registry) tryLock() (unlock func(), err error) {
	if !r.mu.TryLock() {
		return nil, errors.New("names: registry busy")
	}
	return r.flockDir(unix.LOCK_EX | unix.LOCK_NB)
}

// flockDir takes the flock(2) of the directory lock; the caller holds
// r.mu, which it releases on failure or with the returned unlock.
func (r *Registry) flockDir(how int) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(r.dir, lockFile), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("names: lock registry: %w", err)
	}
	if err := flock(f, how); err != nil {
		f.Close()
		r.mu.Unlock()
		return nil, fmt.Errorf("names: lock registry: %w", err)
	}
	return func() {
		f.Close() // releases the flock
		r.mu.Unlock()
	}, nil
}

// Register records info as a live node and returns the Lease that keeps it
// alive. The registration lasts until Lease.Close or until this process
// exits or is killed, whichever comes first. Zero fields of info are
// filled in (see NodeInfo). If a live process holds the same ID, Register
// returns an error wrapping ErrExists; leftovers of a dead one are
// removed.
//
// The Lease must stay reachable: if it is garbage collected, its file is
// closed and the node disappears.
func (r *Registry) Register(info NodeInfo) (*Lease, error) {
	if err := checkID(info.ID); err != nil {
		return nil, err
	}
	if info.PID == 0 {
		info.PID = os.Getpid()
	}
	if info.Host == "" {
		info.Host, _ = os.Hostname()
	}
	if info.Started.IsZero() {
		info.Started = nowUTC()
	}
	info.Addrs = append([]string(nil), info.Addrs...)
	token, err := newToken()
	if err != nil {
		return nil, fmt.Errorf("names: register %q: %w", info.ID, err)
	}
	data, err := json.Marshal(nodeFile{NodeInfo: info, Token: token})
	if err != nil {
		return nil, fmt.Errorf("names: register %q: %w", info.ID, err)
	}

	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch p := r.probeNode(info.ID); p.status {
	case nodeLive:
		return nil, fmt.Errorf("%w: node %q is registered by live process %d on %s; pick another ID or stop that process",
			ErrExists, info.ID, p.file.PID, p.file.Host)
	case nodeCorrupt:
		return nil, fmt.Errorf("%w: node %q: %s cannot be read or checked (locked by a live process but corrupt, or not a regular file); stop that process or remove the file",
			ErrExists, info.ID, r.nodePath(info.ID))
	}
	// Leftovers of an earlier process with this ID (dead or missing node
	// file): remove them before the new file appears.
	r.removeNodesLocked(map[string]bool{info.ID: true})

	// Lock a temporary file, then rename it into place: a reader never sees
	// nodes/<ID>.json unlocked while its owner lives.
	f, err := createTemp(filepath.Join(r.dir, nodesDir))
	if err != nil {
		return nil, fmt.Errorf("names: register %q: %w", info.ID, err)
	}
	fail := func(err error) (*Lease, error) {
		_ = os.Remove(f.Name())
		f.Close()
		return nil, fmt.Errorf("names: register %q: %w", info.ID, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := os.Rename(f.Name(), r.nodePath(info.ID)); err != nil {
		return fail(err)
	}
	return &Lease{reg: r, info: info, token: token, f: f, bound: map[string]struct{}{}}, nil
}

// Lease is a live registration, returned by Register. It holds the node
// file open and locked. A Lease is safe for concurrent use.
type Lease struct {
	reg   *Registry
	info  NodeInfo
	token string

	mu    sync.Mutex // guards f and bound; taken before Registry.mu
	f     *os.File   // nodes/<ID>.json, flock-ed LOCK_EX; nil once closed
	bound map[string]struct{}
}

// Info returns the registered NodeInfo, with defaults filled in.
func (l *Lease) Info() NodeInfo {
	info := l.info
	info.Addrs = append([]string(nil), info.Addrs...)
	return info
}

// Bind binds name to this node with the given metadata (for example
// kind=channel, capacity=64). Several nodes may bind the same name.
// Binding a name again replaces its metadata.
func (l *Lease) Bind(name string, meta map[string]string) error {
	if err := checkName(name); err != nil {
		return err
	}
	data, err := json.Marshal(holderFile{Name: name, Node: l.info.ID, Token: l.token, Meta: meta})
	if err != nil {
		return fmt.Errorf("names: bind %q: %w", name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("names: bind %q: %w", name, ErrClosed)
	}
	unlock, err := l.reg.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if !sameFile(l.f, l.reg.nodePath(l.info.ID)) {
		return fmt.Errorf("names: bind %q: the registration file of node %q was removed from %s; register again",
			name, l.info.ID, l.reg.dir)
	}
	dir := l.reg.nameDir(encodeName(name))
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("names: bind %q: %w", name, err)
	}
	if err := writeFileAtomic(dir, l.info.ID+fileExt, data); err != nil {
		_ = os.Remove(dir) // only if empty
		return fmt.Errorf("names: bind %q: %w", name, err)
	}
	l.bound[name] = struct{}{}
	return nil
}

// Unbind removes this node's binding of name. It returns an error wrapping
// ErrNotFound if the lease does not hold name.
func (l *Lease) Unbind(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("names: unbind %q: %w", name, ErrClosed)
	}
	if _, ok := l.bound[name]; !ok {
		return fmt.Errorf("names: unbind %q: node %q does not hold it: %w", name, l.info.ID, ErrNotFound)
	}
	unlock, err := l.reg.lock()
	if err != nil {
		return err
	}
	defer unlock()
	delete(l.bound, name)
	return l.reg.removeEntryLocked(encodeName(name), l.info.ID)
}

// Close unbinds every name, removes the node file and releases the lock.
// Closing a closed Lease does nothing and returns nil.
func (l *Lease) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	unlock, lerr := l.reg.lock()
	if lerr != nil {
		// Without the directory lock nothing is removed; closing f still
		// ends the registration, and the next reader collects the files.
		f.Close()
		return lerr
	}
	defer unlock()
	var first error
	for name := range l.bound {
		if err := l.reg.removeEntryLocked(encodeName(name), l.info.ID); err != nil && first == nil {
			first = err
		}
	}
	l.bound = nil
	if p := l.reg.nodePath(l.info.ID); sameFile(f, p) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = fmt.Errorf("names: close: %w", err)
		}
	}
	if err := f.Close(); err != nil && first == nil {
		first = fmt.Errorf("names: close: %w", err)
	}
	return first
}

// removeEntryLocked removes names/<enc>/<id>.json and the name directory
// if it became empty. The caller holds the directory lock.
func (r *Registry) removeEntryLocked(enc, id string) error {
	dir := r.nameDir(enc)
	err := os.Remove(filepath.Join(dir, id+fileExt))
	_ = os.Remove(dir) // fails unless empty
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("names: %w", err)
	}
	return nil
}

// removeNodesLocked deletes everything left by the given (dead or missing)
// nodes: their bindings first, their node files last, so that a collector
// that dies half way leaves an unlocked node file for the next one. It
// also deletes temporary files, which under the directory lock can only be
// leftovers of a process that died while writing, and empty name
// directories. The caller holds the directory lock.
func (r *Registry) removeNodesLocked(ids map[string]bool) {
	root := filepath.Join(r.dir, namesDir)
	dirs, _ := os.ReadDir(root)
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		dir := filepath.Join(root, d.Name())
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, tmpPrefix) || strings.HasSuffix(n, fileExt) && ids[strings.TrimSuffix(n, fileExt)] {
				_ = os.Remove(filepath.Join(dir, n))
			}
		}
		_ = os.Remove(dir) // fails unless empty
	}
	for id := range ids {
		_ = os.Remove(r.nodePath(id))
	}
	nodes, _ := os.ReadDir(filepath.Join(r.dir, nodesDir))
	for _, e := range nodes {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			_ = os.Remove(filepath.Join(r.dir, nodesDir, e.Name()))
		}
	}
}

// entryKey names one binding file.
type entryKey struct{ enc, id string }

// scan caches node probes during one read operation and collects what
// should be garbage collected at its end.
type scan struct {
	r      *Registry
	probes map[string]probeResult
	dead   map[string]bool   // nodes seen dead or missing
	stale  map[entryKey]bool // bindings that looked stale
}

func (r *Registry) newScan() *scan {
	return &scan{r: r, probes: map[string]probeResult{}, dead: map[string]bool{}, stale: map[entryKey]bool{}}
}

func (s *scan) probe(id string) probeResult {
	p, ok := s.probes[id]
	if !ok {
		p = s.r.probeNode(id)
		s.probes[id] = p
	}
	return p
}

// holders reads names/<enc>/ and returns its live holders sorted by node
// ID, and the name they hold. want is the expected name, or "" to accept
// the name of the first valid entry (for hashed directories).
func (s *scan) holders(enc, want string) ([]Holder, string, error) {
	ents, err := os.ReadDir(s.r.nameDir(enc))
	if errors.Is(err, fs.ErrNotExist) {
		return []Holder{}, want, nil
	}
	if err != nil {
		return nil, want, fmt.Errorf("names: %w", err)
	}
	name := want
	hs := []Holder{}
	for _, e := range ents {
		fn := e.Name()
		if strings.HasPrefix(fn, ".") || !strings.HasSuffix(fn, fileExt) {
			continue
		}
		id := strings.TrimSuffix(fn, fileExt)
		if checkID(id) != nil {
			continue
		}
		data, rerr := readFileLimited(filepath.Join(s.r.nameDir(enc), fn))
		if errors.Is(rerr, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		p := s.probe(id)
		switch p.status {
		case nodeMissing:
			s.stale[entryKey{enc, id}] = true
			continue
		case nodeDead:
			s.dead[id] = true
			continue
		case nodeCorrupt:
			continue
		}
		if rerr != nil {
			continue // unreadable, but its owner lives: leave it
		}
		hf, perr := parseHolderFile(data)
		if perr != nil || hf.Node != id || encodeName(hf.Name) != enc {
			continue // corrupt, but its owner lives: leave it
		}
		if hf.Token != p.file.Token {
			s.stale[entryKey{enc, id}] = true // left by an earlier process with this ID
			continue
		}
		if name == "" {
			name = hf.Name
		}
		if hf.Name != name {
			continue
		}
		hs = append(hs, Holder{Node: p.file.NodeInfo, Meta: hf.Meta})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Node.ID < hs[j].Node.ID })
	return hs, name, nil
}

// collect removes what the scan found dead, after checking again under
// the directory lock that it still is. It is skipped if the lock is busy,
// and errors are ignored: collection saves later readers work and disk
// space, and answers never depend on it.
func (s *scan) collect() {
	if len(s.dead) == 0 && len(s.stale) == 0 {
		return
	}
	unlock, err := s.r.tryLock()
	if err != nil {
		return
	}
	defer unlock()
	ids := map[string]bool{}
	for id := range s.dead {
		if st := s.r.probeNode(id).status; st == nodeDead || st == nodeMissing {
			ids[id] = true
		}
	}
	for k := range s.stale {
		p := s.r.probeNode(k.id)
		switch p.status {
		case nodeDead, nodeMissing:
			ids[k.id] = true
		case nodeLive:
			data, err := readFileLimited(filepath.Join(s.r.nameDir(k.enc), k.id+fileExt))
			if err != nil {
				continue
			}
			if hf, err := parseHolderFile(data); err == nil && hf.Token != p.file.Token {
				_ = s.r.removeEntryLocked(k.enc, k.id)
			}
		}
	}
	if len(ids) > 0 {
		s.r.removeNodesLocked(ids)
	}
}

// Lookup returns the live holders of name, sorted by node ID. A name
// nobody holds gives an empty slice and a nil error. Entries of dead
// nodes are never returned; Lookup removes them as it finds them.
func (r *Registry) Lookup(name string) ([]Holder, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	s := r.newScan()
	hs, _, err := s.holders(encodeName(name), name)
	s.collect()
	return hs, err
}

// Node returns the NodeInfo of the live node id, or an error wrapping
// ErrNotFound.
func (r *Registry) Node(id string) (NodeInfo, error) {
	if err := checkID(id); err != nil {
		return NodeInfo{}, err
	}
	s := r.newScan()
	p := s.probe(id)
	if p.status == nodeDead {
		s.dead[id] = true
		s.collect()
	}
	if p.status != nodeLive {
		return NodeInfo{}, fmt.Errorf("names: node %q: %w", id, ErrNotFound)
	}
	return p.file.NodeInfo, nil
}

// Nodes returns every live node, sorted by ID.
func (r *Registry) Nodes() ([]NodeInfo, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, nodesDir))
	if err != nil {
		return nil, fmt.Errorf("names: %w", err)
	}
	s := r.newScan()
	out := []NodeInfo{}
	for _, e := range ents {
		fn := e.Name()
		if strings.HasPrefix(fn, ".") || !strings.HasSuffix(fn, fileExt) {
			continue
		}
		id := strings.TrimSuffix(fn, fileExt)
		if checkID(id) != nil {
			continue
		}
		switch p := s.probe(id); p.status {
		case nodeLive:
			out = append(out, p.file.NodeInfo)
		case nodeDead:
			s.dead[id] = true
		}
	}
	s.collect()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// List returns every name with at least one live holder, sorted by name,
// for `loft ls`.
func (r *Registry) List() ([]Entry, error) {
	dirs, err := os.ReadDir(filepath.Join(r.dir, namesDir))
	if err != nil {
		return nil, fmt.Errorf("names: %w", err)
	}
	s := r.newScan()
	out := []Entry{}
	for _, d := range dirs {
		enc := d.Name()
		if !d.IsDir() || strings.HasPrefix(enc, ".") {
			continue
		}
		want, ok := decodeName(enc)
		if !ok && !(strings.HasPrefix(enc, hashedPrefix) && len(enc) == len(hashedPrefix)+64) {
			continue // not a directory encodeName can produce
		}
		hs, name, err := s.holders(enc, want)
		if err != nil || len(hs) == 0 {
			continue
		}
		out = append(out, Entry{Name: name, Holders: hs})
	}
	s.collect()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
