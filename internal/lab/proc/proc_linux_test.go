package proc

import (
	"os"
	"testing"
)

func TestProcStat(t *testing.T) {
	self := os.Getpid()
	if !Alive(self) {
		t.Fatal("Alive(self) = false")
	}
	s1, s2 := StartTime(self), StartTime(self)
	if s1 == "" || s1 != s2 {
		t.Fatalf("StartTime(self) = %q then %q, want one non-empty value", s1, s2)
	}

	if _, err := Stat(1 << 30); err == nil {
		t.Error("procStat of a PID above pid_max succeeded")
	}
}
