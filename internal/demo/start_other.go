//go:build !linux

package demo

import "os/exec"

// startCmd starts cmd. Outside Linux a child relies on its stdin closing and
// on its deadline to exit when the parent is gone.
func startCmd(cmd *exec.Cmd) error { return cmd.Start() }
