//go:build linux

package shm

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Options configures where regions live. The zero value (or a nil *Options)
// uses the per-user default directory.
type Options struct {
	// Dir is the directory that holds region files. Zero means the default:
	// $LOFT_RUNTIME_DIR/shm if LOFT_RUNTIME_DIR is set, else
	// $XDG_RUNTIME_DIR/loft/shm if XDG_RUNTIME_DIR is set, else
	// /dev/shm/loft-<uid>. The directory is created with mode 0700 if
	// missing. It must not be a symbolic link, must be owned by the effective
	// user and must have no group or other permission bits; otherwise every
	// call fails with an error matching fs.ErrPermission. Processes that share
	// a region must use the same directory.
	Dir string
}

// maxNameLen bounds region names so that the temporary name used during
// Create also fits in a file name.
const maxNameLen = 200

// Dir returns the directory regions are kept in for opts (nil means
// defaults), without creating or checking it.
func Dir(opts *Options) string {
	if opts != nil && opts.Dir != "" {
		return opts.Dir
	}
	if d := os.Getenv("LOFT_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "shm")
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "loft", "shm")
	}
	return "/dev/shm/loft-" + strconv.Itoa(os.Geteuid())
}

func checkName(name string) error {
	if name == "" || len(name) > maxNameLen || name[0] == '.' {
		return fmt.Errorf("shm: region name %q: must be 1 to %d bytes and not start with '.': %w", name, maxNameLen, ErrName)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Errorf("shm: region name %q: must not contain '/' or NUL: %w", name, ErrName)
		}
	}
	return nil
}

// permError builds an error that matches fs.ErrPermission.
func permError(format string, args ...any) error {
	return fmt.Errorf("shm: "+format+": %w", append(args, fs.ErrPermission)...)
}

// openDir creates (if needed) and opens the region directory, and checks that
// it is a real directory, owned by us, with no group/other access. The
// returned descriptor is used with the *at system calls so that the checked
// directory is the one used.
func openDir(opts *Options) (int, string, error) {
	dir := Dir(opts)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return -1, dir, fmt.Errorf("shm: create region directory: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			return -1, dir, permError("region directory %s is a symbolic link or not a directory; use a real directory", dir)
		}
		return -1, dir, fmt.Errorf("shm: open region directory %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, dir, fmt.Errorf("shm: stat region directory %s: %w", dir, err)
	}
	if err := checkOwner("directory", dir, &st); err != nil {
		unix.Close(fd)
		return -1, dir, err
	}
	return fd, dir, nil
}

// checkOwner refuses a file or directory owned by another user or open to the
// group or others.
func checkOwner(what, path string, st *unix.Stat_t) error {
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		return permError("region %s %s is owned by uid %d, not by this user (uid %d); refusing to use it", what, path, st.Uid, uid)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		return permError("region %s %s has mode %#o; group and other permission bits are not allowed (chmod go-rwx, or use another Options.Dir)", what, path, perm)
	}
	return nil
}
