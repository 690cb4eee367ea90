package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// Acquire returns this node's lease: its podCIDR(s) for the families of nc,
// after publishing attrs in the node's annotations (patched only where they
// differ). prev plays no part: the controller-manager, not flanneld, picks
// the subnet. A missing podCIDR, or one outside the network, is an error
// wrapping ErrPodCIDR that names the node and the field; the caller retries,
// since the controller-manager may assign it later.
//
// The lease carries the attributes as published, so a public-ip-overwrite
// annotation shows in its PublicIP. It has no ID and no expiry: a podCIDR
// stays the node's for as long as the node exists.
func (s *Source) Acquire(ctx context.Context, nc *netconf.Config, attrs lease.Attrs, prev lease.Prev) (lease.Lease, error) {
	s.mu.Lock()
	s.nc, s.attrs = nc, attrs
	s.mu.Unlock()
	n, err := s.getNode(ctx)
	if err != nil {
		return lease.Lease{}, err
	}
	return s.publish(ctx, n, nc, attrs)
}

// publish checks n's podCIDRs and patches our annotations onto it where
// they differ from attrs.
func (s *Source) publish(ctx context.Context, n *v1.Node, nc *netconf.Config, attrs lease.Attrs) (lease.Lease, error) {
	fam := familiesOf(nc)
	sn4, sn6, err := podCIDRs(n, fam)
	if err != nil {
		return lease.Lease{}, err
	}
	if err := inNetwork(n.Name, nc, sn4, sn6); err != nil {
		return lease.Lease{}, err
	}
	set, pub, err := s.keys.published(n.Annotations, fam, attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("kube: node %q: %w", n.Name, err)
	}
	if set != nil {
		// Through the status subresource, as upstream: its RBAC grants
		// nodes/status patch, not nodes patch.
		_, err := s.client.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType,
			annotationPatch(set), metav1.PatchOptions{FieldManager: "flanneld"}, "status")
		if err != nil {
			return lease.Lease{}, fmt.Errorf("kube: annotate node %q: %w", n.Name, err)
		}
		s.log.Info("published lease in node annotations", "node", n.Name, "subnet", sn4, "subnet6", sn6, "changed", len(set))
	}
	return lease.Lease{Subnet: sn4, Subnet6: sn6, Attrs: pub}, nil
}

// keepPoll is how often Keep reads the node itself while no Watch feeds it
// (the alloc backend runs no informer); upstream's informer resyncs at the
// same period.
const keepPoll = 5 * time.Minute

// Keep holds l until ctx ends. A podCIDR never expires, so there is nothing
// to renew; Keep instead
//   - sets the node's NetworkUnavailable condition to False (reason
//     FlannelIsUp) once, when so configured: Keep starts after subnet.env
//     is written, which is when upstream's CompleteLease does it;
//   - re-publishes our annotations when someone removed or changed them
//     (calling onRenew with the lease as now published);
//   - returns an error wrapping lease.ErrNotFound when the node is deleted
//     or its podCIDR changes: the lease is gone, the caller acquires anew.
//
// It learns of changes to the node from Watch's informer; without a
// running Watch it reads the node every five minutes.
func (s *Source) Keep(ctx context.Context, l lease.Lease, onRenew func(lease.Lease)) error {
	condDone := !s.setCond
	condRetry := backoff.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: backoff.Within10}
	patchRetry := backoff.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: backoff.Within10}
	for {
		wake := keepPoll
		n, changed, err := s.ownNode(ctx)
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("kube: node %q was deleted: %w", s.node, lease.ErrNotFound)
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Warn("keep lease: read node", "node", s.node, "err", err)
			wake = patchRetry.Next()
		default:
			nl, err := s.hold(ctx, n, l)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if errors.Is(err, lease.ErrNotFound) {
					return err
				}
				s.log.Warn("keep lease", "node", s.node, "err", err)
				wake = patchRetry.Next()
				break
			}
			patchRetry.Reset()
			if !nl.Attrs.Equal(l.Attrs) {
				l = nl
				if onRenew != nil {
					onRenew(l)
				}
			}
			if !condDone {
				if err := s.setNetworkAvailable(ctx); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					s.log.Warn("set node condition NetworkUnavailable=False", "node", s.node, "err", err)
					wake = min(wake, condRetry.Next())
				} else {
					condDone = true
				}
			}
		}
		t := time.NewTimer(wake)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// hold compares the node with the lease held: a changed podCIDR loses the
// lease; annotations that differ from what Acquire published are patched
// back.
func (s *Source) hold(ctx context.Context, n *v1.Node, l lease.Lease) (lease.Lease, error) {
	s.mu.Lock()
	nc, attrs := s.nc, s.attrs
	s.mu.Unlock()
	if nc == nil {
		return l, errors.New("kube: Keep before Acquire")
	}
	sn4, sn6, err := podCIDRs(n, familiesOf(nc))
	if err != nil || sn4 != l.Subnet || sn6 != l.Subnet6 {
		return l, fmt.Errorf("kube: node %q: podCIDR %q %q no longer matches the lease %s: %w",
			n.Name, n.Spec.PodCIDR, n.Spec.PodCIDRs, l, lease.ErrNotFound)
	}
	set, _, err := s.keys.published(n.Annotations, familiesOf(nc), attrs)
	if err != nil || set == nil {
		// A bad overwrite annotation set after start: keep what we
		// published rather than fail the lease; Acquire reports it at
		// the next start.
		return l, nil
	}
	s.log.Info("node annotations were changed by someone else; publishing ours again", "node", n.Name, "keys", len(set))
	return s.publish(ctx, n, nc, attrs)
}

// ownNode returns our node, from the informer's cache while Watch runs
// (with a channel closed at its next change) or else from the API server
// (with a nil channel, which never fires).
func (s *Source) ownNode(ctx context.Context) (*v1.Node, <-chan struct{}, error) {
	s.mu.Lock()
	if s.watching && s.own != nil {
		n, ch := s.own, s.ownChanged
		s.mu.Unlock()
		return n, ch, nil
	}
	// Not watched, or not in the cache: a node created after the
	// informer listed may not have reached it yet, so only the API
	// server's NotFound counts as deleted.
	ch := s.ownChanged
	s.mu.Unlock()
	n, err := s.getNode(ctx)
	return n, ch, err
}

// setNetworkAvailable sets NetworkUnavailable=False, reason FlannelIsUp, as
// upstream's CompleteLease writes it, unless the node already says so.
// The informer's slim copy has no status, so this reads the node.
func (s *Source) setNetworkAvailable(ctx context.Context) error {
	n, err := s.getNode(ctx)
	if err != nil {
		return err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeNetworkUnavailable && c.Status == v1.ConditionFalse && c.Reason == ReasonFlannelIsUp {
			return nil
		}
	}
	patch := conditionPatch(metav1.Now())
	_, err = s.client.CoreV1().Nodes().Patch(ctx, s.node, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: "flanneld"}, "status")
	if err != nil {
		return fmt.Errorf("kube: patch node %q status: %w", s.node, err)
	}
	s.log.Info("node condition NetworkUnavailable set to False", "node", s.node, "reason", ReasonFlannelIsUp)
	return nil
}

// ReasonFlannelIsUp is the NetworkUnavailable=False reason upstream sets.
const ReasonFlannelIsUp = "FlannelIsUp"

func conditionPatch(now metav1.Time) []byte {
	c := []v1.NodeCondition{{
		Type:               v1.NodeNetworkUnavailable,
		Status:             v1.ConditionFalse,
		Reason:             ReasonFlannelIsUp,
		Message:            "Flannel is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}}
	b, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": c}})
	if err != nil {
		panic(err)
	}
	return b
}
