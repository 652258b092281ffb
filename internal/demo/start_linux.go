package demo

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// startCmd starts cmd so that the kernel kills it with SIGKILL if the
// parent dies. Pdeathsig fires when the thread that forked the child ends,
// not the process, and the Go runtime ends a thread when a goroutine locked
// to it returns; so every child is started from one goroutine locked to its
// thread for the life of the process.
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	spawnOnce.Do(func() {
		spawnReq = make(chan spawnCall)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for c := range spawnReq {
				c.errc <- c.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnReq <- spawnCall{cmd, errc}
	return <-errc
}

var (
	spawnOnce sync.Once
	spawnReq  chan spawnCall
)

type spawnCall struct {
	cmd  *exec.Cmd
	errc chan error
}
