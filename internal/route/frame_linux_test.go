package route

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/logbuf"
)

// TestFrame: the guard before Init and after Close, Sync applying what
// desired makes of the peers, and one warning per skipped peer and problem.
func TestFrame(t *testing.T) {
	lb := &logbuf.Buffer{Echo: func(l string) { t.Log(l) }}
	released := 0
	// Peers are subnet numbers; odd ones are skipped.
	even := func(ids []int) []int {
		return slices.DeleteFunc(slices.Clone(ids), func(id int) bool { return id%2 == 1 })
	}
	sub := func(id int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", id)) }
	f := NewFrame("test", lb.Logger(), sub, func(id int) Want {
		if id%2 == 1 {
			return Want{Problem: "odd"}
		}
		return Want{State: peerState([]int{id}, 0)}
	})
	if err := f.Sync([]int{2}); err == nil || !strings.Contains(err.Error(), "Init") {
		t.Errorf("Sync before a Table: %v, want an error about Init", err)
	}
	k := newFakeKernel()
	f.Table = NewTable(k)
	f.OnClose(func() { released++ })

	warnings := func() (n int) {
		for _, l := range lb.Take() {
			if strings.Contains(l, "level=WARN") {
				n++
			}
		}
		return n
	}
	for i, tc := range []struct {
		peers []int
		warns int
	}{
		{[]int{1, 2, 3}, 2},
		{[]int{1, 2, 3}, 0}, // same problems: no new warnings
		{[]int{2, 3}, 0},
		{[]int{1, 2, 3, 4}, 1}, // 1 came back
	} {
		if err := f.Sync(tc.peers); err != nil {
			t.Fatal(err)
		}
		if got, want := k.render(), renderWant(peerState(even(tc.peers), 0)); got != want {
			t.Errorf("step %d: kernel\n%s\nwant\n%s", i, got, want)
		}
		if n := warnings(); n != tc.warns {
			t.Errorf("step %d: %d warnings, want %d", i, n, tc.warns)
		}
	}
	if got := f.Peers(); len(got) != 4 {
		t.Errorf("Peers() = %v, want the last Sync's", got)
	}
	if err := f.Close(); err != nil || released != 1 || !f.Closed() {
		t.Errorf("Close: %v, released %d times, Closed %v", err, released, f.Closed())
	}
	_ = f.Close()
	if released != 1 {
		t.Errorf("second Close released the handle again")
	}
	if err := f.Ready(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Ready after Close: %v, want an error about closed", err)
	}
}
