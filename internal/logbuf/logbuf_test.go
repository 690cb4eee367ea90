package logbuf

import (
	"slices"
	"sync"
	"testing"
)

func TestTakeReturnsOnlyNewLines(t *testing.T) {
	var b Buffer
	if got := b.Take(); got != nil {
		t.Errorf("Take on an empty buffer = %q, want nil", got)
	}
	log := b.Logger()
	log.Info("one")
	log.Warn("two")
	if got := b.Take(); len(got) != 2 {
		t.Fatalf("Take = %q, want 2 lines", got)
	}
	if got := b.Take(); got != nil {
		t.Errorf("second Take = %q, want nil", got)
	}
	log.Debug("three")
	if got := b.Take(); len(got) != 1 {
		t.Errorf("Take after one more record = %q", got)
	}
	if n := len(b.String()); n == 0 {
		t.Error("String lost what Take returned")
	}
}

func TestConcurrentWritersAndEcho(t *testing.T) {
	var mu sync.Mutex
	var echoed []string
	b := Buffer{Echo: func(s string) { mu.Lock(); echoed = append(echoed, s); mu.Unlock() }}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				_, _ = b.Write([]byte("x\n"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.Take(); len(got) != 400 {
		t.Errorf("%d lines, want 400", len(got))
	}
	if len(echoed) != 400 || !slices.Contains(echoed, "x") {
		t.Errorf("%d echoed, want 400 trimmed lines", len(echoed))
	}
}
