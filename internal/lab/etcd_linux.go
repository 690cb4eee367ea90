package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flannel-go/flannel/internal/lab/proc"
	"github.com/flannel-go/flannel/internal/ns"
)

// EtcdMember is one member of a lab-run etcd cluster.
type EtcdMember struct {
	Name      string     // e1, e2, ...
	NS        string     // <ID>-e1, ...
	Addr      netip.Addr // underlay address
	ClientURL string     // http://<Addr>:2379
	PeerURL   string     // http://<Addr>:2380
	DataDir   string
	// InitialCluster is etcd's --initial-cluster: every member's
	// name=PeerURL.
	InitialCluster string
	PID            int
}

// SystemEtcdMember returns an EtcdMemberCmd that runs the etcd binary bin
// (Debian's etcd-server, 3.4 or later) for a member. Elections are tuned
// for a lab on one machine: a heartbeat every 50 ms and a new leader about
// half a second after the old one stops answering.
func SystemEtcdMember(bin string) func(m EtcdMember) []string {
	return func(m EtcdMember) []string {
		return []string{bin, "--name", m.Name, "--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", m.InitialCluster, "--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(filepath.Dir(m.DataDir)),
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"}
	}
}

// buildMembers creates one namespace per etcd member on the switch, at the
// underlay addresses after the etcd namespace's.
func (l *Lab) buildMembers(o Options) error {
	if o.EtcdMemberCmd == nil {
		return errors.New("lab: an etcd cluster needs EtcdMemberCmd")
	}
	if o.EtcdMembers > 9 {
		return fmt.Errorf("lab: %d etcd members: at most 9", o.EtcdMembers)
	}
	var peers []string
	for i := 1; i <= o.EtcdMembers; i++ {
		addr := nthAddr(o.Underlay.Addr(), 1+i)
		m := &EtcdMember{
			Name:      "e" + strconv.Itoa(i),
			NS:        fmt.Sprintf("%s-e%d", l.ID, i),
			Addr:      addr,
			ClientURL: "http://" + net.JoinHostPort(addr.String(), "2379"),
			PeerURL:   "http://" + net.JoinHostPort(addr.String(), "2380"),
			DataDir:   filepath.Join(l.Dir, fmt.Sprintf("etcd-e%d", i)),
		}
		peers = append(peers, m.Name+"="+m.PeerURL)
		l.Members = append(l.Members, m)
		if _, err := ns.Create(m.NS); err != nil {
			return err
		}
		if err := l.plug(m.NS, m.Name, netip.PrefixFrom(addr, o.Underlay.Bits()), netip.Addr{}, netip.Prefix{}); err != nil {
			return err
		}
	}
	for _, m := range l.Members {
		m.InitialCluster = strings.Join(peers, ",")
	}
	return nil
}

// startCluster starts every member at once (none is ready before a quorum
// is) and waits until the cluster answers.
func (l *Lab) startCluster(ctx context.Context, o Options) error {
	l.EtcdEndpoints = nil
	for _, m := range l.Members {
		l.EtcdEndpoints = append(l.EtcdEndpoints, m.ClientURL)
	}
	for _, m := range l.Members {
		pid, err := l.spawn(m.NS, "etcd-"+m.Name+".log", o.EtcdMemberCmd(*m))
		if err != nil {
			return fmt.Errorf("lab: start etcd member %s: %w", m.Name, err)
		}
		m.PID = pid
	}
	if err := l.save(); err != nil {
		return err
	}
	return l.waitEtcd(ctx, func() error {
		for _, m := range l.Members {
			if !proc.Alive(m.PID) {
				return fmt.Errorf("lab: etcd member %s exited; see %s", m.Name, filepath.Join(l.Dir, "etcd-"+m.Name+".log"))
			}
		}
		return nil
	})
}

// StartEtcd starts the lab's single etcd (again, after StopEtcd: same
// address, same data) and waits until it answers.
func (l *Lab) StartEtcd(ctx context.Context) error {
	if len(l.EtcdArgv) == 0 {
		return errors.New("lab: this lab does not run a single etcd of its own")
	}
	if l.EtcdPID != 0 && proc.Alive(l.EtcdPID) {
		return errors.New("lab: etcd is already running")
	}
	pid, err := l.spawn(l.EtcdNS, "etcd.log", l.EtcdArgv)
	if err != nil {
		return fmt.Errorf("lab: start etcd: %w", err)
	}
	l.EtcdPID = pid
	if err := l.save(); err != nil {
		return err
	}
	return l.waitEtcd(ctx, func() error {
		if !proc.Alive(pid) {
			return fmt.Errorf("lab: etcd exited; see %s", filepath.Join(l.Dir, "etcd.log"))
		}
		return nil
	})
}

// StopEtcd sends sig to the lab's single etcd and waits until it has
// exited.
func (l *Lab) StopEtcd(sig syscall.Signal) error {
	return l.stop(&l.EtcdPID, sig)
}

// StopMember sends sig to etcd member m and waits until it has exited.
func (l *Lab) StopMember(m *EtcdMember, sig syscall.Signal) error {
	return l.stop(&m.PID, sig)
}

// Leader returns the member the cluster currently follows, asking each
// running member in turn.
func (l *Lab) Leader(ctx context.Context) (*EtcdMember, error) {
	cli, err := l.Etcd()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var errs []error
	for _, m := range l.Members {
		if m.PID == 0 {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, m.ClientURL)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			continue
		}
		if st.Leader == 0 {
			errs = append(errs, fmt.Errorf("%s: no leader", m.Name))
			continue
		}
		ml, err := cli.MemberList(ctx)
		if err != nil {
			return nil, fmt.Errorf("lab: etcd member list: %w", err)
		}
		for _, mm := range ml.Members {
			if mm.ID != st.Leader {
				continue
			}
			for _, m := range l.Members {
				if mm.Name == m.Name {
					return m, nil
				}
			}
			return nil, fmt.Errorf("lab: etcd leader %q is not a lab member", mm.Name)
		}
	}
	return nil, fmt.Errorf("lab: no etcd leader: %w", errors.Join(errs...))
}

// waitEtcd waits until a read through the lab's client succeeds, failing
// early when check reports that etcd died.
func (l *Lab) waitEtcd(ctx context.Context, check func() error) error {
	cli, err := l.Etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		if cerr := check(); cerr != nil {
			return cerr
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("lab: etcd not ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
