package masq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// nftFamily is where one address family's rules live in nftables mode.
type nftFamily struct {
	table              string
	family             nftables.TableFamily
	saddrOff, daddrOff uint32
}

var nftFamilies = [2]nftFamily{
	{table: "flannel-ipv4", family: nftables.TableFamilyIPv4, saddrOff: 12, daddrOff: 16},
	{table: "flannel-ipv6", family: nftables.TableFamilyIPv6, saddrOff: 8, daddrOff: 24},
}

// nftChain is one of flannel's two base chains and the rules it must hold.
type nftChain struct {
	name  string
	typ   nftables.ChainType
	hook  *nftables.ChainHook
	prio  *nftables.ChainPriority
	want  bool
	rules [][]expr.Any
	udata []byte // rule comment, for people reading `nft list`
}

// nftChains returns upstream's chains for one family, with two deliberate
// differences from upstream's nftables mode that make it match its
// iptables mode (and so treat the same packets the same way whichever mode
// a cluster runs): the kube-proxy mark is matched masked
// (`meta mark & 0x4000 == 0x4000`, not `meta mark 0x4000`, which misses
// packets carrying other mark bits too), and the fourth rule is
// `ip saddr != <network> ip daddr <pod subnet> return` (iptables
// `! -s <network> -d <pod subnet>`) rather than `saddr != <pod subnet>
// daddr <network>`.
func nftChains(nf nftFamily, f famRules, fullyRandom bool) []nftChain {
	post := nftChain{
		name: "postrtg", typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookPostrouting, prio: nftables.ChainPriorityNATSource,
		want: f.wantMasq(), udata: userdata.AppendString(nil, userdata.TypeComment, masqComment),
	}
	if post.want {
		net, pod := f.network, f.subnet
		ret := &expr.Verdict{Kind: expr.VerdictReturn}
		masq := func() expr.Any { return &expr.Masq{FullyRandom: fullyRandom} }
		mark := binaryutil.NativeEndian.PutUint32(0x4000)
		post.rules = [][]expr.Any{
			{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
				ret,
			},
			slices.Concat(nf.match(nf.saddrOff, pod, false), nf.match(nf.daddrOff, net, false), []expr.Any{ret}),
			slices.Concat(nf.match(nf.saddrOff, net, false), nf.match(nf.daddrOff, pod, false), []expr.Any{ret}),
			slices.Concat(nf.match(nf.saddrOff, net, true), nf.match(nf.daddrOff, pod, false), []expr.Any{ret}),
			slices.Concat(nf.match(nf.saddrOff, net, false), nf.match(nf.daddrOff, f.multicast(), true), []expr.Any{masq()}),
			slices.Concat(nf.match(nf.saddrOff, net, true), nf.match(nf.daddrOff, net, false), []expr.Any{masq()}),
		}
	}
	fwd := nftChain{
		name: "forward", typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookForward, prio: nftables.ChainPriorityFilter,
		want: f.wantForward(), udata: userdata.AppendString(nil, userdata.TypeComment, fwdComment),
	}
	if fwd.want {
		accept := &expr.Verdict{Kind: expr.VerdictAccept}
		fwd.rules = [][]expr.Any{
			slices.Concat(nf.match(nf.saddrOff, f.network, false), []expr.Any{accept}),
			slices.Concat(nf.match(nf.daddrOff, f.network, false), []expr.Any{accept}),
		}
	}
	return []nftChain{post, fwd}
}

// match is `ip saddr|daddr [!=] prefix`.
func (nf nftFamily) match(off uint32, p netip.Prefix, neq bool) []expr.Any {
	addr := p.Addr().AsSlice()
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))}
	cmp := &expr.Cmp{Op: op, Register: 1, Data: addr}
	if p.Bits() == len(addr)*8 {
		return []expr.Any{load, cmp}
	}
	mask := net.CIDRMask(p.Bits(), len(addr)*8)
	return []expr.Any{load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		cmp}
}

// exprKey is the canonical form two rules are compared in: their
// expressions as the kernel receives them.
func exprKey(fam nftables.TableFamily, exprs []expr.Any) (string, error) {
	var b bytes.Buffer
	for _, e := range exprs {
		m, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return "", err
		}
		b.Write(m)
	}
	return b.String(), nil
}

// nftState is what the kernel holds for one family.
type nftState struct {
	table  bool
	chains map[string]*nftables.Chain
	rules  map[string][]*nftables.Rule
}

func readNFT(c *nftables.Conn, nf nftFamily) (nftState, error) {
	st := nftState{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{}}
	tables, err := c.ListTablesOfFamily(nf.family)
	if err != nil {
		return st, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		st.table = st.table || t.Name == nf.table
	}
	if !st.table {
		return st, nil
	}
	chains, err := c.ListChainsOfTableFamily(nf.family)
	if err != nil {
		return st, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != nf.table {
			continue
		}
		st.chains[ch.Name] = ch
		rules, err := c.GetRules(&nftables.Table{Name: nf.table, Family: nf.family}, ch)
		if err != nil {
			return st, fmt.Errorf("list rules of %s %s: %w", nf.table, ch.Name, err)
		}
		st.rules[ch.Name] = rules
	}
	return st, nil
}

// nftOp queues one change on a connection.
type nftOp func(*nftables.Conn) error

// planNFT compares one family's nftables state with flannel's chains and
// returns the operations that repair the difference, to be sent as one
// batch (one transaction: packets see the old or the new ruleset, never a
// half-built one), and a note per repair. Rules that are already right
// keep their handles: missing ones are inserted next to a kept neighbour,
// stray ones deleted by handle.
func planNFT(st nftState, nf nftFamily, chains []nftChain) ([]nftOp, []string, error) {
	table := &nftables.Table{Name: nf.table, Family: nf.family}
	var ops []nftOp
	var notes []string
	wantTable := false
	for _, ch := range chains {
		wantTable = wantTable || ch.want
	}
	if !wantTable {
		if st.table {
			ops = append(ops, func(c *nftables.Conn) error { c.DelTable(table); return nil })
			notes = append(notes, "table "+nf.table+" removed")
		}
		return ops, notes, nil
	}
	if !st.table {
		ops = append(ops, func(c *nftables.Conn) error { c.AddTable(table); return nil })
		notes = append(notes, "table "+nf.table+" created")
	}
	for _, spec := range chains {
		chain := &nftables.Chain{Name: spec.name, Table: table, Type: spec.typ, Hooknum: spec.hook, Priority: spec.prio}
		have, exists := st.chains[spec.name]
		if exists && (!spec.want || !sameShape(have, chain)) {
			ops = append(ops, func(c *nftables.Conn) error { c.FlushChain(chain); c.DelChain(chain); return nil })
			exists = false
			if !spec.want {
				notes = append(notes, "chain "+spec.name+" removed")
				continue
			}
			notes = append(notes, "chain "+spec.name+" had the wrong type, hook or priority")
		}
		if !spec.want {
			continue
		}
		newRule := func(exprs []expr.Any) *nftables.Rule {
			return &nftables.Rule{Table: table, Chain: chain, Exprs: exprs, UserData: spec.udata}
		}
		if !exists {
			ops = append(ops, func(c *nftables.Conn) error { c.AddChain(chain); return nil })
			for _, r := range spec.rules {
				ops = append(ops, func(c *nftables.Conn) error { c.AddRule(newRule(r)); return nil })
			}
			notes = append(notes, fmt.Sprintf("chain %s created with %d rules", spec.name, len(spec.rules)))
			continue
		}
		rules := st.rules[spec.name]
		hk := make([]string, len(rules))
		for i, r := range rules {
			k, err := exprKey(nf.family, r.Exprs)
			if err != nil {
				// Not ours (we can marshal all of ours): unique key so it is deleted.
				k = fmt.Sprintf("\x00unmarshalable %d", r.Handle)
			}
			hk[i] = k
		}
		wk := make([]string, len(spec.rules))
		for j, r := range spec.rules {
			k, err := exprKey(nf.family, r)
			if err != nil {
				return nil, nil, fmt.Errorf("encode rule %d of %s: %w", j, spec.name, err)
			}
			wk[j] = k
		}
		match := lcsMatch(hk, wk)
		added, removed := 0, 0
		for i, keep := range kept(len(rules), match) {
			if !keep {
				del := &nftables.Rule{Table: table, Chain: chain, Handle: rules[i].Handle}
				ops = append(ops, func(c *nftables.Conn) error { return c.DelRule(del) })
				removed++
			}
		}
		// Missing rules come in runs; each run is anchored to the kept rule
		// before it (added after it, last first) or, at the top of the
		// chain, to the kept rule after it (inserted before it, in order).
		for a := 0; a < len(match); {
			if match[a] >= 0 {
				a++
				continue
			}
			b := a
			for b+1 < len(match) && match[b+1] < 0 {
				b++
			}
			switch {
			case a > 0:
				anchor := rules[match[a-1]].Handle
				for j := b; j >= a; j-- {
					r := newRule(spec.rules[j])
					r.Position = anchor
					ops = append(ops, func(c *nftables.Conn) error { c.AddRule(r); return nil })
				}
			case b+1 < len(match):
				anchor := rules[match[b+1]].Handle
				for j := a; j <= b; j++ {
					r := newRule(spec.rules[j])
					r.Position = anchor
					ops = append(ops, func(c *nftables.Conn) error { c.InsertRule(r); return nil })
				}
			default:
				for j := a; j <= b; j++ {
					r := newRule(spec.rules[j])
					ops = append(ops, func(c *nftables.Conn) error { c.AddRule(r); return nil })
				}
			}
			added += b - a + 1
			a = b + 1
		}
		if added+removed > 0 {
			notes = append(notes, fmt.Sprintf("chain %s: %d rules added, %d removed", spec.name, added, removed))
		}
	}
	return ops, notes, nil
}

func sameShape(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		(have.Policy == nil || *have.Policy == nftables.ChainPolicyAccept)
}

// nftMgr programs the nftables implementation.
type nftMgr struct {
	log         *slog.Logger
	randomFully support
	clean       [2]bool // the family is off and has been found free of flannel's table
}

func (m *nftMgr) apply(ctx context.Context, fams [2]famRules) (bool, error) {
	changed := false
	for i, f := range fams {
		if err := ctx.Err(); err != nil {
			return changed, err
		}
		if !f.on && m.clean[i] {
			continue
		}
		m.clean[i] = false
		ch, err := m.applyFamily(nftFamilies[i], f, "rules repaired")
		if err != nil {
			if !f.on {
				// Only cleanup of a family we do not use: not worth failing for.
				m.log.Debug("remove flannel nftables table of unused family", "family", f.name(), "err", err)
				m.clean[i] = true
				continue
			}
			return changed, fmt.Errorf("masq: nftables %s: %w", nftFamilies[i].table, err)
		}
		changed = changed || ch
		if !f.on {
			m.clean[i] = true
		}
	}
	return changed, nil
}

func (m *nftMgr) applyFamily(nf nftFamily, f famRules, msg string) (bool, error) {
	st, err := readNFTRetry(nf)
	if err != nil {
		return false, err
	}
	fr := f.fullyRandom && m.randomFully != unsupported
	ops, notes, err := planNFT(st, nf, nftChains(nf, f, fr))
	if err != nil || len(ops) == 0 {
		return false, err
	}
	err = runNFT(ops)
	if err != nil && fr && m.randomFully == unknown && f.wantMasq() {
		// Try once without fully-random before calling it an error: an old
		// kernel refuses the flag.
		ops2, notes2, perr := planNFT(st, nf, nftChains(nf, f, false))
		if perr == nil && runNFT(ops2) == nil {
			m.log.Warn("nftables masquerade without fully-random: the kernel refused it", "err", err)
			m.randomFully, notes, err, fr = unsupported, notes2, nil, false
		}
	}
	if err != nil {
		return false, err
	}
	if fr && f.wantMasq() {
		m.randomFully = supported
	}
	m.log.Info(msg, "impl", "nftables", "family", f.name(), "changes", strings.Join(notes, "; "))
	return true, nil
}

// readNFTRetry reads the state, retrying a few times because a dump can be
// interrupted by a concurrent ruleset change.
func readNFTRetry(nf nftFamily) (nftState, error) {
	var err error
	for range 3 {
		var c *nftables.Conn
		c, err = nftables.New(nftables.AsLasting())
		if err != nil {
			return nftState{}, fmt.Errorf("open netlink: %w", err)
		}
		var st nftState
		st, err = readNFT(c, nf)
		_ = c.CloseLasting()
		if err == nil {
			return st, nil
		}
	}
	return nftState{}, err
}

func runNFT(ops []nftOp) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	for _, op := range ops {
		if err := op(c); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply batch: %w", err)
	}
	return nil
}

// remove deletes flannel's nftables tables of both families.
func (m *nftMgr) remove(ctx context.Context) error {
	var errs []error
	for i := range nftFamilies {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := m.applyFamily(nftFamilies[i], famRules{v6: i == 1}, "removed flannel's nftables rules")
		if err != nil {
			errs = append(errs, fmt.Errorf("masq: remove nftables %s: %w", nftFamilies[i].table, err))
		}
	}
	return errors.Join(errs...)
}
