package udp

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipePoll returns a pollFD on the read end of a non-blocking pipe and the
// write end.
func pipePoll(t *testing.T) (*pollFD, int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	pf, err := newPollFD(p[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pf.Close(); unix.Close(p[1]) })
	return pf, p[1]
}

// readByte is the callback a loop would pass: false on EAGAIN.
func readByte(got *[]byte) func(uintptr) bool {
	return func(fd uintptr) bool {
		var b [1]byte
		n, err := unix.Read(int(fd), b[:])
		if err == unix.EAGAIN {
			return false
		}
		if n == 1 {
			*got = append(*got, b[0])
		}
		return true
	}
}

func TestPollConnWakesOnData(t *testing.T) {
	pf, w := pipePoll(t)
	c := pf.conn()
	var got []byte
	done := make(chan error, 1)
	go func() { done <- c.Read(readByte(&got)) }()
	select {
	case err := <-done:
		t.Fatalf("Read returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := unix.Write(w, []byte{7}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil || len(got) != 1 || got[0] != 7 {
			t.Fatalf("Read = %v, got %v; want nil and [7]", err, got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still waiting 5 s after data arrived")
	}
}

func TestPollConnShutdownWakesWaiter(t *testing.T) {
	pf, _ := pipePoll(t)
	var got []byte
	done := make(chan error, 1)
	go func() { done <- pf.conn().Read(readByte(&got)) }()
	select {
	case err := <-done:
		t.Fatalf("Read returned %v before shutdown", err)
	case <-time.After(50 * time.Millisecond):
	}
	pf.shutdown()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Read after shutdown = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still waiting 5 s after shutdown")
	}
	called := false
	if err := pf.conn().Write(func(uintptr) bool { called = true; return true }); !errors.Is(err, os.ErrClosed) || called {
		t.Errorf("Write after shutdown = %v (callback run: %v), want os.ErrClosed without touching the fd", err, called)
	}
	if err := pf.Close(); err != nil {
		t.Errorf("Close after shutdown: %v", err)
	}
	if err := pf.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v, want os.ErrClosed", err)
	}
}
