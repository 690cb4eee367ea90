package masq

// lcsMatch pairs the rules of a chain as it is (have) with the rules it
// must hold (want), keeping a longest common subsequence in place: for each
// want[j] it returns the index in have that stays where it is, or -1 when
// want[j] must be inserted. Rules of have that no want entry claims must be
// deleted. Keeping the longest run untouched is what lets a repair restore
// one deleted rule without flushing the others (their handles and counters
// survive).
func lcsMatch(have, want []string) []int {
	n, m := len(have), len(want)
	// l[i][j] is the LCS length of have[i:] and want[j:].
	l := make([][]int, n+1)
	for i := range l {
		l[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			switch {
			case have[i] == want[j]:
				l[i][j] = l[i+1][j+1] + 1
			case l[i+1][j] >= l[i][j+1]:
				l[i][j] = l[i+1][j]
			default:
				l[i][j] = l[i][j+1]
			}
		}
	}
	match := make([]int, m)
	for j := range match {
		match[j] = -1
	}
	for i, j := 0, 0; i < n && j < m; {
		switch {
		case have[i] == want[j]:
			match[j] = i
			i++
			j++
		case l[i+1][j] >= l[i][j+1]:
			i++
		default:
			j++
		}
	}
	return match
}

// kept reports which have entries match keeps.
func kept(nHave int, match []int) []bool {
	k := make([]bool, nHave)
	for _, i := range match {
		if i >= 0 {
			k[i] = true
		}
	}
	return k
}
