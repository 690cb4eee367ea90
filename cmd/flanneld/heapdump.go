//go:build heapdump

package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// A flanneld built with -tags heapdump writes a heap profile of what is
// live to /tmp/flanneld-heap-PID-N.pprof on each SIGUSR1: the lab runs
// flanneld in namespaces with no port to reach, and what a profile shows
// of a real daemon (the lease source, the peer set, the backend) no
// benchmark of one package does. Never in a release build: a stray
// signal would write files.
func init() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	go func() {
		for n := 0; ; n++ {
			<-c
			runtime.GC()
			name := fmt.Sprintf("/tmp/flanneld-heap-%d-%d.pprof", os.Getpid(), n)
			f, err := os.Create(name)
			if err != nil {
				fmt.Fprintf(os.Stderr, "heapdump: %v\n", err)
				continue
			}
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				fmt.Fprintf(os.Stderr, "heapdump: %v\n", err)
			}
			f.Close()
		}
	}()
}
