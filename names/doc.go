// Package names is loft's embedded name service for one host: no daemon,
// just a private directory that every process opens.
//
// A process registers itself as a node and binds names to it, such as a
// channel "jobs" held by several receivers, a topic, or its own inbox. Other
// processes look the names up. A name disappears when its owner goes away,
// whether it calls Close, exits, or is killed with SIGKILL: no look-up ever
// returns a dead holder.
//
//	reg, err := names.Open("") // $LOFT_RUNTIME_DIR, $XDG_RUNTIME_DIR/loft or $TMPDIR/loft-<uid>
//	lease, err := reg.Register(names.NodeInfo{ID: "worker-1", Addrs: []string{"unix:///run/w1.sock"}})
//	defer lease.Close()
//	err = lease.Bind("jobs", map[string]string{"kind": "channel"})
//
//	holders, err := reg.Lookup("jobs") // live holders, sorted by node ID
//	changes, err := reg.Changes(ctx)   // wakes on bind, unbind, register, death
//	err = reg.WaitDead(ctx, "worker-1") // returns once worker-1 is gone
//
// # Layout
//
// The directory (mode 0700, owned by the user; Open refuses anything else
// with an error wrapping fs.ErrPermission) holds:
//
//	.lock                        flock(2) taken for every change (not for reads)
//	nodes/<ID>.json              {"id","pid","host","addrs","started","token"}
//	names/<encoded name>/<ID>.json   {"name","node","token","meta"}
//	nodes/.tmp-*, names/*/.tmp-*     files being written (renamed into place)
//
// A name is encoded as one directory name: letters, digits, '_', '-' and
// '.' (except first) stay; every other byte becomes %XX. A name whose
// encoding would exceed 255 bytes uses "~" and the hex SHA-256 of the name;
// entries always carry the name itself.
//
// # Liveness
//
// A node is live while its file is locked. Register creates a temporary
// file, takes an exclusive flock(2) on it, writes the JSON and renames it
// to nodes/<ID>.json, so the file is never visible unlocked; the Lease
// keeps the descriptor, and the kernel releases the lock when the process
// dies, SIGKILL included. A reader opens the file and tries a
// non-blocking shared lock: if it succeeds, the owner is dead. flock locks
// belong to open file descriptions, so the probe works from the owner's
// own process too. A binding counts only if its node is live and carries
// the token of the node's current registration, so a binding left by an
// earlier process with the same ID is never returned.
//
// Whoever notices a dead node removes its files (garbage collection by
// readers): under the directory lock, after checking again that the node
// is still dead, bindings first and the node file last. A reader that
// finds the lock busy skips collection rather than wait, so reads never
// block on another process. Register, Bind,
// Unbind and Close also run under that lock, so collection cannot remove
// a file another process is creating, and a temporary file seen under it
// is a leftover of a dead writer. Files that do not parse are skipped,
// and removed only when their node's lock shows it is dead.
//
// # Watching
//
// Changes and WaitDead use inotify through an *os.File, so waiting costs
// a parked goroutine, not a thread. A node's death is seen as
// IN_CLOSE_WRITE on its file: the owner is the only writer, and the kernel
// raises the event when the owner's descriptor is released, by Close,
// exit or SIGKILL alike. The kernel raises it just before it drops the
// lock, so after the event the lock is probed again for up to half a
// second with a doubling interval from 20µs. Nothing polls while nodes
// live, unless inotify or /proc is unavailable (see WaitDead).
//
// # Limits
//
// Node IDs: 1 to 128 bytes of [A-Za-z0-9._-], not starting with '.'.
// Names: valid UTF-8, 1 to 255 bytes. The registry is for one host and one
// user; it needs flock(2) and inotify, so it must live on a local file
// system (tmpfs, ext4, ...), not NFS. A process stopped (SIGSTOP) while
// holding the directory lock stalls every change until it continues.
//
// Registry and Lease are safe for concurrent use.
package names
