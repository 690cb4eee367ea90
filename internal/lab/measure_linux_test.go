package lab

import (
	"os"
	"testing"
)

func TestCPUSeconds(t *testing.T) {
	if _, err := CPUSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
