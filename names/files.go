package names

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Layout of the registry directory (see doc.go).
const (
	nodesDir  = "nodes"
	namesDir  = "names"
	lockFile  = ".lock"
	fileExt   = ".json"
	tmpPrefix = ".tmp-"

	// maxFileSize bounds what is read from a node or holder file; larger
	// files are treated as corrupt.
	maxFileSize = 1 << 20
)

// nodeFile is the content of nodes/<ID>.json: the NodeInfo plus the token
// of this registration. Every binding repeats the token, so a binding left
// by an earlier process with the same ID is never taken for a live one.
type nodeFile struct {
	NodeInfo
	Token string `json:"token"`
}

// holderFile is the content of names/<encoded name>/<ID>.json.
type holderFile struct {
	Name  string            `json:"name"`
	Node  string            `json:"node"`
	Token string            `json:"token"`
	Meta  map[string]string `json:"meta,omitempty"`
}

// parseNodeFile decodes and checks a node file. It never panics.
func parseNodeFile(data []byte) (nodeFile, error) {
	var nf nodeFile
	if err := json.Unmarshal(data, &nf); err != nil {
		return nodeFile{}, fmt.Errorf("names: corrupt node file: %w", err)
	}
	if err := checkID(nf.ID); err != nil {
		return nodeFile{}, fmt.Errorf("names: corrupt node file: %w", err)
	}
	if nf.Token == "" {
		return nodeFile{}, errors.New("names: corrupt node file: no token")
	}
	return nf, nil
}

// parseHolderFile decodes and checks a binding file. It never panics.
func parseHolderFile(data []byte) (holderFile, error) {
	var hf holderFile
	if err := json.Unmarshal(data, &hf); err != nil {
		return holderFile{}, fmt.Errorf("names: corrupt binding file: %w", err)
	}
	if err := checkName(hf.Name); err != nil {
		return holderFile{}, fmt.Errorf("names: corrupt binding file: %w", err)
	}
	if err := checkID(hf.Node); err != nil {
		return holderFile{}, fmt.Errorf("names: corrupt binding file: %w", err)
	}
	if hf.Token == "" {
		return holderFile{}, errors.New("names: corrupt binding file: no token")
	}
	return hf, nil
}

// newToken returns a random registration token.
func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// flock applies flock(2) to f, retrying on EINTR.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return ferr
}

// heldByOther reports whether some open file description other than f's
// holds an exclusive flock on f's file, that is whether the node that
// registered the file is alive. A probe from the owner's own process also
// works: flock locks belong to open file descriptions, not processes.
func heldByOther(f *os.File) (bool, error) {
	err := flock(f, unix.LOCK_SH|unix.LOCK_NB)
	switch {
	case err == nil:
		_ = flock(f, unix.LOCK_UN)
		return false, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	default:
		return false, err
	}
}

// nodeStatus is what a probe of nodes/<ID>.json found.
type nodeStatus int

const (
	nodeMissing nodeStatus = iota // no node file
	nodeDead                      // file present, nobody holds its lock
	nodeLive                      // locked and readable
	nodeCorrupt                   // locked (or not probeable) but unreadable: skipped, never removed
)

// probeResult is the outcome of probing one node.
type probeResult struct {
	status nodeStatus
	file   nodeFile
}

// openNoFollow opens path read-only without following a final symlink.
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// probeNode opens nodes/<id>.json, tests its lock and, if it is held,
// reads the content through the same descriptor (so the content and the
// lock belong to the same file, even if the path is being replaced).
func (r *Registry) probeNode(id string) probeResult {
	f, err := openNoFollow(r.nodePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return probeResult{status: nodeMissing}
	}
	if err != nil {
		return probeResult{status: nodeCorrupt}
	}
	defer f.Close()
	held, err := heldByOther(f)
	if err != nil {
		return probeResult{status: nodeCorrupt}
	}
	if !held {
		return probeResult{status: nodeDead}
	}
	data, err := readLimited(f)
	if err != nil {
		return probeResult{status: nodeCorrupt}
	}
	nf, err := parseNodeFile(data)
	if err != nil || nf.ID != id {
		return probeResult{status: nodeCorrupt}
	}
	return probeResult{status: nodeLive, file: nf}
}

// readLimited reads all of f, up to maxFileSize bytes.
func readLimited(f *os.File) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("names: %s: larger than %d bytes", f.Name(), maxFileSize)
	}
	return data, nil
}

// readFileLimited opens path (not following symlinks) and reads it.
func readFileLimited(path string) ([]byte, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f)
}

// createTemp creates a new, empty, owner-only temporary file in dir.
func createTemp(dir string) (*os.File, error) {
	for range 100 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		path := filepath.Join(dir, tmpPrefix+hex.EncodeToString(b[:]))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, fmt.Errorf("names: cannot create a temporary file in %s", dir)
}

// writeFileAtomic writes data to dir/name through a temporary file and a
// rename, so readers see either the old file or the whole new one.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := createTemp(dir)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// sameFile reports whether path currently names the file open on f.
func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(path)
	if err != nil {
		return false
	}
	return os.SameFile(a, b)
}

// nowUTC is time.Now without the monotonic reading, for JSON.
func nowUTC() time.Time { return time.Now().Round(0) }
