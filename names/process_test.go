package names

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func holderIDs(hs []Holder) []string {
	ids := []string{}
	for _, h := range hs {
		ids = append(ids, h.Node.ID)
	}
	return ids
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// TestKilledHolderDisappears runs three real processes bound to "jobs",
// SIGKILLs one, and checks that the others stay and the dead one's files go.
func TestKilledHolderDisappears(t *testing.T) {
	reg := openReg(t)
	dir := reg.Dir()
	c1 := startChild(t, dir, "w1", "jobs", "w1.inbox")
	c2 := startChild(t, dir, "w2", "jobs", "w2.inbox")
	c3 := startChild(t, dir, "w3", "jobs")

	hs, err := reg.Lookup("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := holderIDs(hs), []string{"w1", "w2", "w3"}; !equalStrings(got, want) {
		t.Fatalf("Lookup(jobs) = %v, want %v", got, want)
	}
	for i, c := range []*child{c1, c2, c3} {
		if hs[i].Node.PID != c.cmd.Process.Pid {
			t.Errorf("holder %s: PID %d, want %d", hs[i].Node.ID, hs[i].Node.PID, c.cmd.Process.Pid)
		}
		if hs[i].Meta["kind"] != "channel" {
			t.Errorf("holder %s: meta %v", hs[i].Node.ID, hs[i].Meta)
		}
		if len(hs[i].Node.Addrs) != 1 || hs[i].Node.Addrs[0] != "unix:///nowhere/"+c.id {
			t.Errorf("holder %s: addrs %v", hs[i].Node.ID, hs[i].Node.Addrs)
		}
	}

	c2.kill(t)
	// The files are still there: nobody has looked yet.
	if !exists(filepath.Join(dir, "nodes", "w2.json")) || !exists(filepath.Join(dir, "names", "jobs", "w2.json")) {
		t.Fatal("files of w2 vanished before any reader looked; the test would not show collection")
	}
	hs, err = reg.Lookup("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := holderIDs(hs), []string{"w1", "w3"}; !equalStrings(got, want) {
		t.Fatalf("after killing w2, Lookup(jobs) = %v, want %v", got, want)
	}
	for _, p := range []string{"nodes/w2.json", "names/jobs/w2.json", "names/w2.inbox/w2.json", "names/w2.inbox"} {
		if exists(filepath.Join(dir, p)) {
			t.Errorf("stale %s not removed", p)
		}
	}
	if _, err := reg.Node("w2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Node(w2) error = %v, want ErrNotFound", err)
	}
	if info, err := reg.Node("w1"); err != nil || info.PID != c1.cmd.Process.Pid {
		t.Errorf("Node(w1) = %+v, %v", info, err)
	}
	nodes, err := reg.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].ID != "w1" || nodes[1].ID != "w3" {
		t.Errorf("Nodes() = %+v", nodes)
	}
	list, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "jobs" || list[1].Name != "w1.inbox" || len(list[0].Holders) != 2 {
		t.Errorf("List() = %+v", list)
	}

	c1.kill(t)
	c3.kill(t)
	hs, err = reg.Lookup("jobs")
	if err != nil || len(hs) != 0 || hs == nil {
		t.Fatalf("after killing all, Lookup(jobs) = %#v, %v; want empty non-nil slice", hs, err)
	}
	if list, err := reg.List(); err != nil || len(list) != 0 {
		t.Errorf("List() = %+v, %v", list, err)
	}
	for _, p := range []string{"nodes/w1.json", "nodes/w3.json", "names/jobs"} {
		if exists(filepath.Join(dir, p)) {
			t.Errorf("stale %s not removed", p)
		}
	}
}

// TestKilledNodeIDReused: a process with the same ID registers after the
// first was killed and before anyone looked; the old bindings must not be
// attributed to the new process.
func TestKilledNodeIDReused(t *testing.T) {
	reg := openReg(t)
	dir := reg.Dir()
	a := startChild(t, dir, "w1", "jobs")
	a.kill(t)
	b := startChild(t, dir, "w1", "other")
	hs, err := reg.Lookup("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 0 {
		t.Fatalf("Lookup(jobs) = %+v; the binding of the killed w1 is attributed to the new w1", hs)
	}
	hs, err = reg.Lookup("other")
	if err != nil || len(hs) != 1 || hs[0].Node.PID != b.cmd.Process.Pid {
		t.Fatalf("Lookup(other) = %+v, %v", hs, err)
	}
}

// TestLiveIDRefused: a second process cannot take a live node's ID.
func TestLiveIDRefused(t *testing.T) {
	reg := openReg(t)
	startChild(t, reg.Dir(), "w1")
	if _, err := reg.Register(NodeInfo{ID: "w1"}); !errors.Is(err, ErrExists) {
		t.Fatalf("Register(w1) while a child holds it: %v, want ErrExists", err)
	}
}
