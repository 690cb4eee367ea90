package lab

import (
	"os"
	"testing"
)

func TestProcStat(t *testing.T) {
	self := os.Getpid()
	if !alive(self) {
		t.Fatal("alive(self) = false")
	}
	s1, s2 := startTime(self), startTime(self)
	if s1 == "" || s1 != s2 {
		t.Fatalf("startTime(self) = %q then %q, want one non-empty value", s1, s2)
	}
	if _, err := CPUSeconds(self); err != nil {
		t.Fatal(err)
	}

	if _, err := procStat(1 << 30); err == nil {
		t.Error("procStat of a PID above pid_max succeeded")
	}
}
