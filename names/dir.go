package names

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultDir returns the registry directory used when Open is given "":
// $LOFT_RUNTIME_DIR if set, else $XDG_RUNTIME_DIR/loft if XDG_RUNTIME_DIR
// is set, else loft-<uid> in os.TempDir().
func DefaultDir() string {
	if d := os.Getenv("LOFT_RUNTIME_DIR"); d != "" {
		return d
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		return filepath.Join(x, "loft")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("loft-%d", os.Getuid()))
}

// ensurePrivateDir creates dir with mode 0700 if it does not exist, and
// checks that it is a directory owned by the effective user with no group
// or other permission bits. A directory that fails the check is refused
// with an error wrapping fs.ErrPermission: anyone who can write to it could
// plant or remove registrations.
func ensurePrivateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return fmt.Errorf("names: create runtime directory %s: %w", dir, err)
		}
		err = os.Mkdir(dir, 0o700)
	}
	switch {
	case err == nil:
		// Mkdir is subject to the umask; make the mode exactly 0700.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("names: runtime directory %s: %w", dir, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("names: create runtime directory %s: %w", dir, err)
	}
	return checkPrivateDir(dir)
}

// checkPrivateDir checks ownership and mode of an existing directory.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("names: runtime directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("names: runtime directory %s is not a directory; remove it or set LOFT_RUNTIME_DIR", dir)
	}
	euid := os.Geteuid()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != euid {
		return fmt.Errorf("names: runtime directory %s is owned by uid %d, not by this user (uid %d); "+
			"remove it, or set LOFT_RUNTIME_DIR to a directory you own with mode 0700: %w",
			dir, st.Uid, euid, fs.ErrPermission)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("names: runtime directory %s has mode %04o, open to other users; "+
			"run chmod 700 %s, or set LOFT_RUNTIME_DIR to a private directory: %w",
			dir, perm, dir, fs.ErrPermission)
	}
	return nil
}

// ensureSubdir creates dir/name (mode 0700) if needed and checks it is a
// real directory, not a symlink.
func ensureSubdir(dir, name string) error {
	p := filepath.Join(dir, name)
	err := os.Mkdir(p, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("names: create %s: %w", p, err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("names: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("names: %s is not a directory; remove it", p)
	}
	return nil
}
