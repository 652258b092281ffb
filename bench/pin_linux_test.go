package bench

import (
	"context"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// threadsOn reports whether every thread of this process may run on
// exactly the CPUs of want.
func threadsOn(t *testing.T, want *unix.CPUSet) bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var got unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &got); err != nil {
			continue // the thread ended
		}
		if got != *want {
			return false
		}
	}
	return true
}

func TestPinProcess(t *testing.T) {
	cpus := pinCPUs()
	if cpus == nil {
		t.Skip("fewer than two CPUs")
	}
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	restore, err := pinProcess(cpus[1])
	if err != nil {
		t.Fatal(err)
	}
	var one unix.CPUSet
	one.Set(cpus[1])
	pinned := threadsOn(t, &one)
	restore()
	if !pinned {
		t.Errorf("a thread is not on CPU %d alone after pinProcess", cpus[1])
	}
	if !threadsOn(t, &old) {
		t.Error("a thread was not given back its CPUs")
	}
}

func init() {
	// test-cpus reports the CPUs its process may run on, as a bit mask.
	RegisterRole("test-cpus", func(ctx context.Context, args []string) error {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err != nil {
			return err
		}
		return ToParent("cpus %d", maskOf(&set))
	})
}

func maskOf(set *unix.CPUSet) uint64 {
	var m uint64
	for i := range 64 {
		if set.IsSet(i) {
			m |= 1 << i
		}
	}
	return m
}

// TestPinnedCase: a case with Pin runs this process on one CPU and its
// child on another, and the result says so.
func TestPinnedCase(t *testing.T) {
	cpus := pinCPUs()
	if cpus == nil {
		t.Skip("fewer than two CPUs")
	}
	var parent, child string
	c := Case{System: "t", Transport: "t", Pattern: "pingpong", Mode: "polling", Pin: true,
		Run: func(ctx context.Context, env Env) (Result, error) {
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &set); err != nil {
				return Result{}, err
			}
			parent = strconv.FormatUint(maskOf(&set), 10)
			ch, err := env.Spawn(ctx, "test-cpus")
			if err != nil {
				return Result{}, err
			}
			f, err := ch.Expect(ctx, "cpus")
			if err != nil {
				return Result{}, err
			}
			child = f[0]
			return Result{Msgs: 1, MsgsPerS: 1}, nil
		}}
	res, err := run(context.Background(), []Case{c}, Options{Budget: testBudget(), Rounds: 1, Sizes: []int{64}})
	if err != nil || len(res) != 1 {
		t.Fatalf("%v, %+v", err, res)
	}
	if want := strconv.FormatUint(1<<cpus[0], 10); parent != want {
		t.Errorf("parent's CPU mask %s, want %s", parent, want)
	}
	if want := strconv.FormatUint(1<<cpus[1], 10); child != want {
		t.Errorf("child's CPU mask %s, want %s", child, want)
	}
	if !res[0].Pinned {
		t.Error("result not marked pinned")
	}
	checkNoChildren(t)
}

// TestRawRings runs the bare shared-memory ring's cases once each: the
// one-way one checks every sequence number in the child, the ping-pong
// one every answer in the parent.
func TestRawRings(t *testing.T) {
	if pinCPUs() == nil {
		t.Skip("fewer than two CPUs")
	}
	res, err := Run(context.Background(), Options{
		Quick:  true,
		Budget: testBudget(),
		Filter: `^raw/shm-ring/(oneway|pingpong)/(64|4096)$`,
		Sizes:  []int{64, 4096},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("got %d results, want 4: %+v", len(res), res)
	}
	for _, r := range res {
		if r.Err != "" || r.Msgs <= 0 || r.MsgsPerS <= 0 || !r.Pinned {
			t.Errorf("bad result %+v", r)
		}
		if r.Pattern == "pingpong" && (r.P50ns <= 0 || r.P99ns < r.P50ns) {
			t.Errorf("bad latencies %+v", r)
		}
	}
	checkNoChildren(t)
}
