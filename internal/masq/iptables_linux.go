package masq

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Upstream's names: other tools (and an upstream flanneld taking over the
// host) recognise flannel's rules by them.
const (
	masqChain   = "FLANNEL-POSTRTG"
	fwdChain    = "FLANNEL-FWD"
	masqComment = "flanneld masq"
	fwdComment  = "flanneld forward"
	// kubeProxyMark is kube-proxy's masquerade mark: such traffic is left
	// to kube-proxy's own rules so it is not NATed twice.
	kubeProxyMark = "0x4000/0x4000"
)

// iptChain is one of flannel's chains and the rule in a built-in chain
// that jumps to it.
type iptChain struct {
	table, name, hook, comment string
	want                       bool
	// rules are written as iptables-save prints them (addresses first,
	// then matches, then the target) so that they compare token by token.
	rules [][]string
}

func (c iptChain) jump() []string {
	return []string{"-m", "comment", "--comment", c.comment, "-j", c.name}
}

// iptChains returns flannel's two chains for one family as upstream
// writes them.
func iptChains(f famRules, fullyRandom bool) []iptChain {
	masq := iptChain{table: "nat", name: masqChain, hook: "POSTROUTING", comment: masqComment, want: f.wantMasq()}
	if masq.want {
		net, pod, mc := f.network.String(), f.subnet.String(), f.multicast().String()
		cm := []string{"-m", "comment", "--comment", masqComment}
		masquerade := []string{"-j", "MASQUERADE"}
		if fullyRandom {
			masquerade = append(masquerade, "--random-fully")
		}
		rule := func(parts ...[]string) []string { return slices.Concat(parts...) }
		masq.rules = [][]string{
			rule([]string{"-m", "mark", "--mark", kubeProxyMark}, cm, []string{"-j", "RETURN"}),
			rule([]string{"-s", pod, "-d", net}, cm, []string{"-j", "RETURN"}),
			rule([]string{"-s", net, "-d", pod}, cm, []string{"-j", "RETURN"}),
			rule([]string{"!", "-s", net, "-d", pod}, cm, []string{"-j", "RETURN"}),
			rule([]string{"-s", net, "!", "-d", mc}, cm, masquerade),
			rule([]string{"!", "-s", net, "-d", net}, cm, masquerade),
		}
	}
	fwd := iptChain{table: "filter", name: fwdChain, hook: "FORWARD", comment: fwdComment, want: f.wantForward()}
	if fwd.want {
		net := f.network.String()
		fwd.rules = [][]string{
			{"-s", net, "-m", "comment", "--comment", fwdComment, "-j", "ACCEPT"},
			{"-d", net, "-m", "comment", "--comment", fwdComment, "-j", "ACCEPT"},
		}
	}
	return []iptChain{masq, fwd}
}

// iptTable is one table of iptables-save output.
type iptTable struct {
	chains map[string]bool
	rules  map[string][][]string // chain → rules in order, as tokens after "-A CHAIN"
}

// parseSave reads iptables-save output.
func parseSave(out []byte) (map[string]*iptTable, error) {
	tables := map[string]*iptTable{}
	var cur *iptTable
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '*':
			cur = &iptTable{chains: map[string]bool{}, rules: map[string][][]string{}}
			tables[line[1:]] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", n, line)
		case line[0] == ':':
			name, _, _ := strings.Cut(line[1:], " ")
			cur.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			toks, err := splitRule(line[3:])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			if len(toks) == 0 {
				return nil, fmt.Errorf("line %d: -A without a chain", n)
			}
			cur.rules[toks[0]] = append(cur.rules[toks[0]], toks[1:])
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", n, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return tables, nil
}

// splitRule splits a rule into words the way iptables-restore does:
// double quotes group words, and a backslash inside quotes escapes the
// next character.
func splitRule(s string) ([]string, error) {
	var toks []string
	var b strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				toks = append(toks, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		toks = append(toks, b.String())
	}
	return toks, nil
}

// joinRule is the inverse of splitRule.
func joinRule(toks []string) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 {
			b.WriteByte(' ')
		}
		if t != "" && !strings.ContainsAny(t, " \t\"\\") {
			b.WriteString(t)
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(t); j++ {
			if t[j] == '"' || t[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(t[j])
		}
		b.WriteByte('"')
	}
	return b.String()
}

func ruleKey(toks []string) string { return strings.Join(toks, "\x00") }

// hasPair reports whether toks contains a followed by b.
func hasPair(toks []string, a, b string) bool {
	for i := 0; i+1 < len(toks); i++ {
		if toks[i] == a && toks[i+1] == b {
			return true
		}
	}
	return false
}

// ownedInHook reports whether a rule of a built-in chain belongs to chain
// c: the jump to c's chain, or a rule carrying c's comment (flannel before
// v0.20 appended its rules to POSTROUTING and FORWARD directly).
func (c iptChain) ownedInHook(toks []string) bool {
	return hasPair(toks, "-j", c.name) || hasPair(toks, "--comment", c.comment)
}

// planFamily compares one family's iptables-save output with flannel's
// chains and returns the iptables-restore --noflush input that repairs the
// difference (nil when there is none) and a note per repair. Rules that are
// already right are not touched: a missing rule is inserted at its place,
// a stray one deleted by number, and a chain is only declared (which
// flushes it) when it does not exist yet.
func planFamily(saved map[string]*iptTable, chains []iptChain) ([]byte, []string) {
	var out bytes.Buffer
	var notes []string
	var tables []string
	for _, c := range chains {
		if !slices.Contains(tables, c.table) {
			tables = append(tables, c.table)
		}
	}
	for _, tname := range tables {
		t := saved[tname]
		if t == nil {
			t = &iptTable{}
		}
		var decls, cmds []string
		for _, c := range chains {
			if c.table != tname {
				continue
			}
			exists := t.chains[c.name]
			jumpFound := false
			for _, r := range t.rules[c.hook] {
				if !c.ownedInHook(r) {
					continue
				}
				if c.want && !jumpFound && slices.Equal(r, c.jump()) {
					jumpFound = true
					continue
				}
				cmds = append(cmds, "-D "+c.hook+" "+joinRule(r))
				notes = append(notes, fmt.Sprintf("%s: removed %q", c.hook, joinRule(r)))
			}
			if !c.want {
				if exists {
					cmds = append(cmds, "-F "+c.name, "-X "+c.name)
					notes = append(notes, c.name+": removed")
				}
				continue
			}
			if !exists {
				decls = append(decls, ":"+c.name+" - [0:0]")
				for _, r := range c.rules {
					cmds = append(cmds, "-A "+c.name+" "+joinRule(r))
				}
				notes = append(notes, fmt.Sprintf("%s: created with %d rules", c.name, len(c.rules)))
			} else {
				edits, added, removed := chainEdits(c.name, t.rules[c.name], c.rules)
				cmds = append(cmds, edits...)
				if added+removed > 0 {
					notes = append(notes, fmt.Sprintf("%s: %d rules added, %d removed", c.name, added, removed))
				}
			}
			if !jumpFound {
				cmds = append(cmds, "-A "+c.hook+" "+joinRule(c.jump()))
				notes = append(notes, c.hook+": jump to "+c.name+" added")
			}
		}
		if len(decls)+len(cmds) == 0 {
			continue
		}
		fmt.Fprintf(&out, "*%s\n", tname)
		for _, l := range slices.Concat(decls, cmds) {
			out.WriteString(l)
			out.WriteByte('\n')
		}
		out.WriteString("COMMIT\n")
	}
	if out.Len() == 0 {
		return nil, nil
	}
	return out.Bytes(), notes
}

// chainEdits turns have into want with numbered deletes and inserts,
// leaving the longest common run of rules in place. Deletes go from the
// bottom so the numbers stay valid; inserts go from the top so that every
// rule above the insertion point is already final.
func chainEdits(chain string, have, want [][]string) (cmds []string, added, removed int) {
	hk := make([]string, len(have))
	for i, r := range have {
		hk[i] = ruleKey(r)
	}
	wk := make([]string, len(want))
	for i, r := range want {
		wk[i] = ruleKey(r)
	}
	match := lcsMatch(hk, wk)
	keep := kept(len(have), match)
	for i := len(have) - 1; i >= 0; i-- {
		if !keep[i] {
			cmds = append(cmds, fmt.Sprintf("-D %s %d", chain, i+1))
			removed++
		}
	}
	n := len(have) - removed
	for j, i := range match {
		if i >= 0 {
			continue
		}
		if j == n {
			cmds = append(cmds, "-A "+chain+" "+joinRule(want[j]))
		} else {
			cmds = append(cmds, fmt.Sprintf("-I %s %d %s", chain, j+1, joinRule(want[j])))
		}
		n++
		added++
	}
	return cmds, added, removed
}

// usesRandomFully reports whether flannel's masq chain already holds a
// --random-fully rule, which proves this iptables supports it.
func usesRandomFully(saved map[string]*iptTable) bool {
	t := saved["nat"]
	if t == nil {
		return false
	}
	for _, r := range t.rules[masqChain] {
		if slices.Contains(r, "--random-fully") {
			return true
		}
	}
	return false
}
