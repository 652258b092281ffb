//go:build !linux

package bench

import "errors"

func pinCPUs() []int { return nil }

func pinProcess(cpu int) (func(), error) {
	return nil, errors.New("bench: pinning to a CPU is implemented on Linux only")
}
