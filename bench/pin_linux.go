package bench

import (
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinCPUs returns the CPUs this process may run on when there are at least
// two, for cases that put each side on its own CPU ([Case.Pin]); else nil.
func pinCPUs() []int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return nil
	}
	var cpus []int
	for i := range runtime.NumCPU() * 4 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return nil
	}
	return cpus
}

// pinProcess puts every thread of this process on one CPU and returns a
// function that puts them back on the CPUs they had. Threads started
// later inherit the CPU of the thread that starts them, which is pinned
// too; the threads are listed twice to catch one started meanwhile.
func pinProcess(cpu int) (restore func(), err error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, err
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := setAllThreads(&one); err != nil {
		setAllThreads(&old)
		return nil, err
	}
	return func() { setAllThreads(&old) }, nil
}

func setAllThreads(set *unix.CPUSet) error {
	var first error
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			// A thread that ended meanwhile is no error.
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH && first == nil {
				first = err
			}
		}
	}
	return first
}
