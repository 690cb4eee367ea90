package doctor

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ForwardVerdict is what iptables' FORWARD chain does with overlay traffic.
type ForwardVerdict struct {
	// FromNet and ToNet: whether packets from the network (containers
	// sending) and to it (replies and new connections to containers) are
	// accepted.
	FromNet, ToNet bool
	Reason         string
}

// Dropped reports whether either direction is dropped.
func (v ForwardVerdict) Dropped() bool { return !v.FromNet || !v.ToNet }

// EvalForward decides, from `iptables-save -t filter` output, whether the
// FORWARD chain accepts traffic from and to network. It follows what
// decides for plain overlay packets: unconditional jumps into user chains
// (FLANNEL-FWD, DOCKER-USER), `-s`/`-d` ACCEPT rules covering the network,
// unconditional ACCEPT, DROP and REJECT, and the chain policy. Rules with
// any other match (interfaces, conntrack state, ports) are passed over,
// since whether they apply depends on the packet.
func EvalForward(save []byte, network netip.Prefix) ForwardVerdict {
	chains, policy := parseFilter(save)
	from, fromWhy := newWalker(chains, network, "-s").walk("FORWARD")
	to, toWhy := newWalker(chains, network, "-d").walk("FORWARD")
	if policy == "" {
		policy = "ACCEPT" // no filter table: nothing filters
	}
	v := ForwardVerdict{FromNet: true, ToNet: true}
	if from == "" {
		from, fromWhy = policy, "policy "+policy
	}
	if to == "" {
		to, toWhy = policy, "policy "+policy
	}
	v.FromNet, v.ToNet = from == "ACCEPT", to == "ACCEPT"
	switch {
	case v.FromNet && v.ToNet && fromWhy == toWhy:
		v.Reason = fromWhy
	case v.FromNet && v.ToNet:
		v.Reason = fmt.Sprintf("from it by %s, to it by %s", fromWhy, toWhy)
	case !v.FromNet && !v.ToNet && strings.HasPrefix(fromWhy, "policy"):
		v.Reason = fmt.Sprintf("policy %s and no rule accepts traffic from or to %s (flannel's %s chain is missing or not jumped to)", policy, network, "FLANNEL-FWD")
	case !v.FromNet && !v.ToNet:
		v.Reason = fmt.Sprintf("traffic from %s by %s, to it by %s", network, fromWhy, toWhy)
	case !v.FromNet:
		v.Reason = fmt.Sprintf("traffic from %s is dropped by %s", network, fromWhy)
	default:
		v.Reason = fmt.Sprintf("traffic to %s is dropped by %s", network, toWhy)
	}
	return v
}

// parseFilter returns the rules of each chain of the filter table (as
// tokens after "-A CHAIN") and the FORWARD policy.
func parseFilter(save []byte) (map[string][][]string, string) {
	chains := map[string][][]string{}
	policy := ""
	inFilter := false
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case !inFilter:
		case strings.HasPrefix(line, ":FORWARD "):
			if f := strings.Fields(line); len(f) >= 2 {
				policy = f[1]
			}
		case strings.HasPrefix(line, "-A "):
			f := splitRule(line)
			if len(f) >= 2 {
				chains[f[1]] = append(chains[f[1]], f[2:])
			}
		}
	}
	return chains, policy
}

// splitRule splits an iptables-save line into tokens, keeping quoted
// strings (comments) together.
func splitRule(line string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && quoted && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			quoted, have = !quoted, true
		case ch == ' ' && !quoted:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// walker follows the filter table for packets matched by dir ("-s" or
// "-d") network.
type walker struct {
	chains  map[string][][]string
	network netip.Prefix
	dir     string
	// done memoises each chain's outcome and marks chains being walked,
	// so that loops and many jumps to one chain (which iptables would
	// refuse or which real tables rarely have) cost linear time.
	done map[string]*outcome
}

type outcome struct{ verdict, why string }

func newWalker(chains map[string][][]string, network netip.Prefix, dir string) *walker {
	return &walker{chains: chains, network: network, dir: dir, done: map[string]*outcome{}}
}

// walk returns the verdict ("ACCEPT", "DROP", or "" when the chain falls
// through) and the rule that decided it.
func (w *walker) walk(chain string) (string, string) {
	if o, seen := w.done[chain]; seen {
		if o == nil { // a loop
			return "", ""
		}
		return o.verdict, o.why
	}
	w.done[chain] = nil
	v, why := w.rules(chain)
	w.done[chain] = &outcome{v, why}
	return v, why
}

func (w *walker) rules(chain string) (string, string) {
	for _, r := range w.chains[chain] {
		match, target := ruleParts(r)
		if target == "" {
			continue
		}
		applies := false
		switch {
		case len(match) == 0:
			applies = true
		case len(match) == 2 && match[0] == w.dir:
			p, err := netip.ParsePrefix(match[1])
			if err != nil {
				if a, aerr := netip.ParseAddr(match[1]); aerr == nil {
					p = netip.PrefixFrom(a, a.BitLen())
				}
			}
			applies = p.IsValid() && p.Bits() <= w.network.Bits() && p.Contains(w.network.Addr())
		}
		if !applies {
			continue
		}
		rule := fmt.Sprintf("`-A %s %s`", chain, strings.Join(append(match, "-j", target), " "))
		switch target {
		case "ACCEPT":
			return "ACCEPT", rule
		case "DROP", "REJECT":
			return "DROP", rule
		case "RETURN":
			return "", ""
		default:
			if _, ok := w.chains[target]; ok {
				if v, why := w.walk(target); v != "" {
					return v, why
				}
			}
		}
	}
	return "", ""
}

// ruleParts splits a rule into its matches and its target, dropping
// comments and target options (--reject-with).
func ruleParts(r []string) (match []string, target string) {
	for i := 0; i < len(r); i++ {
		switch r[i] {
		case "-m":
			if i+1 < len(r) && r[i+1] == "comment" {
				i += 3 // -m comment --comment TEXT
				continue
			}
			match = append(match, r[i])
		case "-j", "-g":
			if i+1 < len(r) {
				target = r[i+1]
			}
			return slices.Clip(match), target
		default:
			match = append(match, r[i])
		}
	}
	return match, ""
}
