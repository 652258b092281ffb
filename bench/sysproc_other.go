//go:build !linux

package bench

import (
	"os/exec"
	"syscall"
	"time"
)

// sysProcAttr returns nil: outside Linux a child relies on its stdin closing
// and on its deadline to exit when the parent is gone.
func sysProcAttr() *syscall.SysProcAttr { return nil }

func startCmd(cmd *exec.Cmd) error { return cmd.Start() }

// procCPU returns 0: CPU per message is measured on Linux only.
func procCPU() time.Duration { return 0 }
