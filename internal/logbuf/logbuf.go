// Package logbuf collects what a logger or a command writes while another
// goroutine reads it: a test asserting on the log lines an operator would
// read, or the lab reading a running ping's output.
package logbuf

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// Buffer is a goroutine-safe write buffer. The zero value is ready to use.
type Buffer struct {
	// Echo, if set, is also given each write, trimmed (e.g. t.Log, so a
	// failing test shows the log).
	Echo func(string)

	mu    sync.Mutex
	b     bytes.Buffer
	taken int // bytes already returned by Take
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.b.Write(p)
	b.mu.Unlock()
	if b.Echo != nil {
		b.Echo(strings.TrimSpace(string(p)))
	}
	return n, err
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Take returns the lines written since the last Take, or nil if none.
func (b *Buffer) Take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(string(b.b.Bytes()[b.taken:]))
	b.taken = b.b.Len()
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// Logger returns a debug-level text logger that writes into b.
func (b *Buffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
