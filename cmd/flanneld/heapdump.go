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
			// What the profile cannot show: how the resident memory
			// splits between the live heap, free spans not yet returned,
			// and the runtime's own (stacks, GC metadata).
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(os.Stderr, "heapdump: %s: HeapAlloc %d HeapInuse %d HeapIdle %d HeapReleased %d StackSys %d GCSys %d OtherSys %d MSpanSys %d Sys %d NextGC %d NumGC %d\n",
				name, ms.HeapAlloc, ms.HeapInuse, ms.HeapIdle, ms.HeapReleased, ms.StackSys, ms.GCSys, ms.OtherSys, ms.MSpanSys, ms.Sys, ms.NextGC, ms.NumGC)
		}
	}()
}
