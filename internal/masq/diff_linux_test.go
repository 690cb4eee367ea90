package masq

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// simulate applies chainEdits' commands to a chain held as a slice, the
// way iptables-restore numbers rules (from 1).
func simulate(t *testing.T, have [][]string, cmds []string) [][]string {
	t.Helper()
	chain := slices.Clone(have)
	for _, c := range cmds {
		f := strings.SplitN(c, " ", 4)
		switch f[0] {
		case "-D":
			n, _ := strconv.Atoi(f[2])
			if n < 1 || n > len(chain) {
				t.Fatalf("%q: no rule %d in a chain of %d", c, n, len(chain))
			}
			chain = slices.Delete(chain, n-1, n)
		case "-I":
			n, _ := strconv.Atoi(f[2])
			if n < 1 || n > len(chain)+1 {
				t.Fatalf("%q: cannot insert at %d in a chain of %d", c, n, len(chain))
			}
			toks, _ := splitRule(f[3])
			chain = slices.Insert(chain, n-1, toks)
		case "-A":
			toks, _ := splitRule(strings.SplitN(c, " ", 3)[2])
			chain = append(chain, toks)
		default:
			t.Fatalf("unexpected command %q", c)
		}
	}
	return chain
}

// lcsLen is a slow reference for the length of a longest common subsequence.
func lcsLen(a, b []string) int {
	if len(a) == 0 || len(b) == 0 {
		return 0
	}
	if a[0] == b[0] {
		return 1 + lcsLen(a[1:], b[1:])
	}
	return max(lcsLen(a[1:], b), lcsLen(a, b[1:]))
}

// chainOf turns "abca" into rules "-j a", "-j b", ….
func chainOf(s string) [][]string {
	var out [][]string
	for _, c := range s {
		out = append(out, []string{"-j", string(c)})
	}
	return out
}

func checkEdits(t *testing.T, have, want string) (added, removed int) {
	t.Helper()
	h, w := chainOf(have), chainOf(want)
	cmds, added, removed := chainEdits("C", h, w)
	got := simulate(t, h, cmds)
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Fatalf("have %q want %q: commands %q give %v", have, want, cmds, got)
	}
	keys := func(s string) []string { return strings.Split(s, "") }
	l := lcsLen(keys(have), keys(want))
	if added != len(want)-l || removed != len(have)-l {
		t.Fatalf("have %q want %q: %d added, %d removed; the minimum is %d and %d (commands %q)",
			have, want, added, removed, len(want)-l, len(have)-l, cmds)
	}
	return added, removed
}

func TestChainEdits(t *testing.T) {
	for _, tc := range []struct {
		have, want     string
		added, removed int
	}{
		{"abcdef", "abcdef", 0, 0},
		{"", "abcdef", 6, 0},
		{"abcdef", "", 0, 6},
		{"abdef", "abcdef", 1, 0},   // one rule deleted by hand
		{"bcdef", "abcdef", 1, 0},   // the first
		{"abcde", "abcdef", 1, 0},   // the last
		{"abxcdef", "abcdef", 0, 1}, // a foreign rule in our chain
		{"abcdef", "abcdEF", 2, 2},  // --random-fully turned off
		{"bacdef", "abcdef", 1, 1},  // two rules swapped
		{"aabbcc", "abc", 0, 3},     // duplicates
	} {
		added, removed := checkEdits(t, tc.have, tc.want)
		if added != tc.added || removed != tc.removed {
			t.Errorf("have %q want %q: %d added, %d removed; want %d, %d", tc.have, tc.want, added, removed, tc.added, tc.removed)
		}
	}
}

func FuzzChainEdits(f *testing.F) {
	f.Add("abcdef", "abcdef")
	f.Add("fedcba", "abcdef")
	f.Add("aaab", "abaa")
	f.Add("", "ab")
	f.Fuzz(func(t *testing.T, have, want string) {
		// Small alphabets make duplicates and common runs likely; the
		// reference LCS is exponential, so keep chains short.
		norm := func(s string) string {
			var b strings.Builder
			for i := 0; i < len(s) && i < 9; i++ {
				b.WriteByte('a' + s[i]%4)
			}
			return b.String()
		}
		checkEdits(t, norm(have), norm(want))
	})
}
