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

func TestSummarize(t *testing.T) {
	if s := Summarize(nil); s != (Summary{}) {
		t.Errorf("no runs: %+v", s)
	}
	ts := []Throughput{{3, 1}, {1, 0}, {2, 2}}
	if s := Summarize(ts); s != (Summary{Median: 2, Min: 1, Max: 3, Retransmits: 3}) {
		t.Errorf("odd: %+v", s)
	}
	if s := Summarize(ts[:2]); s.Median != 2 || s.Min != 1 || s.Max != 3 {
		t.Errorf("even: %+v", s)
	}
}
