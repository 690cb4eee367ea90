package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flannel-go/flannel/internal/ns"
)

// A lab host in Kubernetes mode gets its pod as a kubelet's runtime
// creates one: the pod is a namespace (the host's container namespace,
// <ID>-c1, ...), and libcni runs the conflist of the manifest — our
// flannel plugin, then portmap — inside the host's namespace, the flannel
// plugin delegating to the real bridge and host-local. Each host keeps
// what a node keeps under /etc/cni/net.d and /var/lib/cni in CNIDir.

// CNIDir is host h's CNI directory: its conflist, the flannel plugin's
// dataDir (flannel/), host-local's (networks/) and libcni's cache (cache/).
func (l *Lab) CNIDir(h *Host) string { return filepath.Join(l.Dir, h.Name, "cni") }

// CNIDataDir is the flannel plugin's dataDir on host h: one file per pod,
// named by its container ID, holding the delegate configuration ADD used.
func (l *Lab) CNIDataDir(h *Host) string { return filepath.Join(l.CNIDir(h), "flannel") }

func (l *Lab) conflistFile(h *Host) string { return filepath.Join(l.CNIDir(h), "10-flannel.conflist") }

// PodID is the container ID of host h's pod.
func PodID(h *Host) string { return "pod-" + h.CNS }

// WriteConflist installs conflist (the manifest's cni-conf.json) on every
// host, as the DaemonSet's init step installs it on a node, with per-host
// paths for the state a node keeps.
func (l *Lab) WriteConflist(conflist []byte) error {
	for _, h := range l.Hosts {
		dir := l.CNIDir(h)
		c, err := hostConflist(conflist, l.SubnetFile(h), l.CNIDataDir(h), filepath.Join(dir, "networks"))
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := os.WriteFile(l.conflistFile(h), c, 0o644); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	return nil
}

func (l *Lab) cni(h *Host) (*libcni.NetworkConfigList, *libcni.CNIConfig, *libcni.RuntimeConf, error) {
	if l.Kube == nil || len(l.Kube.CNIPath) == 0 {
		return nil, nil, nil, fmt.Errorf("lab %s creates no pods through CNI (not up with --kube)", l.ID)
	}
	list, err := libcni.ConfListFromFile(l.conflistFile(h))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("lab: conflist of %s: %w", h.Name, err)
	}
	cfg := libcni.NewCNIConfigWithCacheDir(l.Kube.CNIPath, filepath.Join(l.CNIDir(h), "cache"), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: PodID(h),
		NetNS:       "/run/netns/" + h.CNS,
		IfName:      "eth0",
		// What containerd passes for a pod without hostPorts; portmap
		// gets an empty list.
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", PodID(h)}, {"K8S_POD_INFRA_CONTAINER_ID", PodID(h)}},
		CapabilityArgs: map[string]any{"portMappings": []any{}},
	}
	return list, cfg, rt, nil
}

// AddPod creates host h's pod: its namespace, then CNI ADD run in the
// host's namespace, as the runtime on a node runs it. The pod's address
// becomes h.Container. Host h's subnet.env must exist.
func (l *Lab) AddPod(ctx context.Context, h *Host) error {
	list, cfg, rt, err := l.cni(h)
	if err != nil {
		return err
	}
	if !ns.Exists(h.CNS) {
		if _, err := ns.Create(h.CNS); err != nil {
			return err
		}
	}
	hostNS, err := ns.Open(h.NS)
	if err != nil {
		return err
	}
	var res *current.Result
	err = hostNS.Do(func() error {
		r, err := cfg.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("lab: CNI ADD of the pod on %s: %w", h.Name, err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			h.Container = a.Unmap()
			break
		}
	}
	if !h.Container.IsValid() {
		return fmt.Errorf("lab: CNI ADD on %s gave the pod no IPv4 address: %v", h.Name, res)
	}
	return l.save()
}

// DelPod deletes host h's pod: CNI DEL with the conflist ADD used (which
// the flannel plugin answers from its saved delegate configuration),
// then the pod's namespace. Deleting a pod twice succeeds.
func (l *Lab) DelPod(ctx context.Context, h *Host) error {
	list, cfg, rt, err := l.cni(h)
	if err != nil {
		return err
	}
	hostNS, err := ns.Open(h.NS)
	if err != nil {
		return nil // the host is gone, and with it the pod's veth and bridge
	}
	if err := hostNS.Do(func() error { return cfg.DelNetworkList(ctx, list, rt) }); err != nil {
		return fmt.Errorf("lab: CNI DEL of the pod on %s: %w", h.Name, err)
	}
	h.Container = netip.Addr{}
	if err := (&ns.NS{Name: h.CNS}).Delete(); err != nil {
		return err
	}
	return l.save()
}

// delPods deletes every host's pod that was created through CNI.
func (l *Lab) delPods(ctx context.Context) error {
	if l.Kube == nil || len(l.Kube.CNIPath) == 0 {
		return nil
	}
	var errs []error
	for _, h := range l.Hosts {
		if _, err := os.Stat(l.conflistFile(h)); err != nil {
			continue // never had a pod
		}
		errs = append(errs, l.DelPod(ctx, h))
	}
	return errors.Join(errs...)
}
