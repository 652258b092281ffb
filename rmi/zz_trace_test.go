package rmi

import (
	"os"
	"runtime/pprof"
	"time"
)

func init() {
	if f := os.Getenv("RMI_CPUPROF"); f != "" && os.Getenv("RMI_CHILD") != "" {
		w, _ := os.Create(f)
		pprof.StartCPUProfile(w)
		go func() {
			time.Sleep(8 * time.Second)
			pprof.StopCPUProfile()
			w.Close()
		}()
	}
}
