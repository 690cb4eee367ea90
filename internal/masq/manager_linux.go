package masq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
)

// Manager keeps flannel's rules in one implementation (iptables or
// nftables) and can clear the other's. Its methods act on the network
// namespace of the calling thread (run them under ns.Do to target
// another one) and are safe for concurrent use.
type Manager struct {
	mu   sync.Mutex
	kind Kind
	ipt  *iptMgr
	nft  *nftMgr
}

// New returns a Manager for kind. It touches no kernel state. In iptables
// mode it fails when iptables-restore is not installed (as on RHEL 10):
// such hosts need EnableNFTables.
func New(kind Kind, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{kind: kind, ipt: newIPTMgr(log), nft: &nftMgr{log: log}}
	switch kind {
	case IPTables:
		if _, err := exec.LookPath(m.ipt.fams[0].restore); err != nil {
			return nil, fmt.Errorf("masq: iptables mode needs %s (or set EnableNFTables in the network config): %w", m.ipt.fams[0].restore, err)
		}
	case NFTables:
	default:
		return nil, fmt.Errorf("masq: unknown rule implementation %v", kind)
	}
	return m, nil
}

// Kind returns the implementation the Manager programs.
func (m *Manager) Kind() Kind { return m.kind }

// Apply makes the kernel hold exactly flannel's rules for r and reports
// whether it had to change anything. Rules that are already right are left
// alone; each repair is logged as "rules repaired".
//
// Equivalent to (iptables mode, per family): `iptables-save`, then, only if
// something differs, one `iptables-restore --noflush --wait` with the
// minimal edit. In nftables mode: a netlink dump of table flannel-ipv4 /
// flannel-ipv6, then one batch.
func (m *Manager) Apply(ctx context.Context, r Rules) (changed bool, err error) {
	fams, err := r.families()
	if err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kind == NFTables {
		return m.nft.apply(ctx, fams)
	}
	return m.ipt.apply(ctx, fams)
}

// RemoveOther removes the flannel rules of the implementation not in use,
// so that switching EnableNFTables does not leave both active: in iptables
// mode the nftables tables flannel-ipv4 and flannel-ipv6, in nftables mode
// the chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) and the rules
// that jump to them. A missing iptables installation is not an error.
func (m *Manager) RemoveOther(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kind == NFTables {
		return m.ipt.remove(ctx)
	}
	return m.nft.remove(ctx)
}

// runFunc runs a program with stdin and returns its stdout; tests replace
// it to check what would be run.
type runFunc func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)

func execRun(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

// iptFamily is one address family's iptables programs and what we learned
// about them.
type iptFamily struct {
	save, restore string
	randomFully   support
	clean         bool // the family is off and has been found free of flannel's rules
}

// iptMgr programs the iptables implementation.
type iptMgr struct {
	log  *slog.Logger
	run  runFunc
	fams [2]iptFamily
}

func newIPTMgr(log *slog.Logger) *iptMgr {
	return &iptMgr{log: log, run: execRun, fams: [2]iptFamily{
		{save: "iptables-save", restore: "iptables-restore"},
		{save: "ip6tables-save", restore: "ip6tables-restore"},
	}}
}

func (m *iptMgr) apply(ctx context.Context, fams [2]famRules) (bool, error) {
	changed := false
	for i, f := range fams {
		fam := &m.fams[i]
		if !f.on && fam.clean {
			continue
		}
		fam.clean = false
		ch, err := m.applyFamily(ctx, fam, f, "rules repaired")
		if err != nil {
			if !f.on && ctx.Err() == nil {
				// Only cleanup of a family we do not use (ip6tables may be
				// missing or IPv6 disabled): not worth failing for.
				m.log.Debug("remove flannel iptables rules of unused family", "family", f.name(), "err", err)
				fam.clean = true
				continue
			}
			return changed, err
		}
		changed = changed || ch
		if !f.on {
			fam.clean = true
		}
	}
	return changed, nil
}

func (m *iptMgr) applyFamily(ctx context.Context, fam *iptFamily, f famRules, msg string) (bool, error) {
	out, err := m.run(ctx, nil, fam.save)
	if err != nil {
		return false, fmt.Errorf("masq: read %s rules: %w", f.name(), err)
	}
	saved, err := parseSave(out)
	if err != nil {
		return false, fmt.Errorf("masq: parse %s output: %w", fam.save, err)
	}
	if fam.randomFully == unknown && usesRandomFully(saved) {
		fam.randomFully = supported
	}
	fr := f.fullyRandom && fam.randomFully != unsupported
	payload, notes := planFamily(saved, iptChains(f, fr))
	if payload == nil {
		return false, nil
	}
	restore := func(p []byte) error {
		_, err := m.run(ctx, p, fam.restore, "--noflush", "--wait")
		return err
	}
	err = restore(payload)
	if err != nil && fr && fam.randomFully == unknown && f.wantMasq() && ctx.Err() == nil {
		// iptables < 1.6.2 (or its kernel) does not know --random-fully:
		// masquerade without it rather than not at all.
		p2, notes2 := planFamily(saved, iptChains(f, false))
		if p2 == nil || restore(p2) == nil {
			m.log.Warn("masquerading without --random-fully: iptables refused it", "family", f.name(), "err", err)
			fam.randomFully, notes, err, fr = unsupported, notes2, nil, false
		}
	}
	if err != nil {
		return false, fmt.Errorf("masq: write %s rules: %w", f.name(), err)
	}
	if fr && f.wantMasq() {
		fam.randomFully = supported
	}
	m.log.Info(msg, "impl", "iptables", "family", f.name(), "changes", strings.Join(notes, "; "))
	return true, nil
}

// remove deletes flannel's iptables chains and jumps of both families.
func (m *iptMgr) remove(ctx context.Context) error {
	var errs []error
	for i := range m.fams {
		fam := &m.fams[i]
		if _, err := exec.LookPath(fam.save); err != nil {
			continue // no iptables: nothing of flannel's can be there
		}
		if _, err := m.applyFamily(ctx, fam, famRules{v6: i == 1}, "removed flannel's iptables rules"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
