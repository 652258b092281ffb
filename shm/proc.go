//go:build linux

package shm

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Process identity.
//
// A lock word names its owner by PID plus a 32-bit "tag": the low 32 bits of
// the owner's start time (field 22 of /proc/<pid>/stat, in clock ticks since
// boot). A PID alone is not enough, because Linux reuses PIDs: after the
// owner dies an unrelated process may get the same PID. A waiter that finds
// the PID alive compares the live process's start time with the tag; if they
// differ, the owner is dead and the PID was reused. Tag 0 means "unknown"
// (procfs was not readable when the owner started) and is never compared.

const (
	// maxPID is the largest PID that fits in every word that stores one
	// (22 bits in holder slots; Linux PID_MAX_LIMIT is 1<<22).
	maxPID = 1<<22 - 1
)

var self struct {
	once sync.Once
	pid  uint32
	tag  uint32
	err  error
}

// selfID returns this process's PID and tag.
func selfID() (pid, tag uint32, err error) {
	self.once.Do(func() {
		p := os.Getpid()
		if p <= 0 || p > maxPID {
			self.err = errors.New("shm: process id does not fit in a lock word")
			return
		}
		self.pid = uint32(p)
		if _, start, err := procStat(p); err == nil {
			self.tag = tagOf(start)
		}
	})
	return self.pid, self.tag, self.err
}

// tagOf maps a start time to a tag; 0 is reserved for "unknown".
func tagOf(start uint64) uint32 {
	t := uint32(start)
	if t == 0 {
		t = 1
	}
	return t
}

var errNoProc = errors.New("process does not exist")

// procStat reads the state letter and start time of a process from
// /proc/<pid>/stat. It returns errNoProc if the process does not exist.
func procStat(pid int) (state byte, start uint64, err error) {
	var buf [1024]byte
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT || err == unix.ESRCH {
			return 0, 0, errNoProc
		}
		return 0, 0, err
	}
	n, err := unix.Read(fd, buf[:])
	unix.Close(fd)
	if err != nil {
		if err == unix.ESRCH {
			return 0, 0, errNoProc
		}
		return 0, 0, err
	}
	return parseStat(buf[:n])
}

var errBadStat = errors.New("shm: cannot parse /proc/<pid>/stat")

// parseStat extracts the state (field 3) and starttime (field 22) from the
// contents of /proc/<pid>/stat. Field 2, the command name, is in parentheses
// and may itself contain spaces and parentheses, so parsing starts after the
// last ')'.
func parseStat(b []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, errBadStat
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, errBadStat
	}
	start, err = strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, errBadStat
	}
	return fields[0][0], start, nil
}

// alive reports whether the process identified by pid and tag still runs.
// A zombie (killed but not yet reaped by its parent) counts as dead: it will
// never unlock anything. A live process whose start time does not match a
// non-zero tag is a different process that reused the PID, so the owner is
// dead. If procfs cannot be read, it falls back to kill(pid, 0), which cannot
// tell zombies or reused PIDs apart from the owner.
func alive(pid, tag uint32) bool {
	if pid == 0 || pid > maxPID {
		return false
	}
	me, myTag, _ := selfID()
	if pid == me {
		return tag == 0 || myTag == 0 || tag == myTag
	}
	state, start, err := procStat(int(pid))
	switch {
	case err == nil:
		if state == 'Z' || state == 'X' || state == 'x' {
			return false
		}
		return tag == 0 || tagOf(start) == tag
	case errors.Is(err, errNoProc):
		return false
	}
	return unix.Kill(int(pid), 0) != unix.ESRCH
}
