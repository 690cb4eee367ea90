package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
)

// The DaemonSet of dist/kube-flannel.yml, translated into what a
// container runtime is told when the kubelet starts its flanneld
// container, so that TestContainerDaemonSet runs the image as the shipped
// file says and follows the file when it changes. Every field the file
// sets must be known here, either translated or left out with a reason
// (dsFieldsSkipped): a new field fails the test with its name.

// dsManifest is what the test reads from dist/kube-flannel.yml.
type dsManifest struct {
	DaemonSet *appsv1.DaemonSet
	// raw is the DaemonSet as the file spells it, for the check that
	// every field set is one the translator knows.
	raw        map[string]any
	ConfigMaps map[string]*corev1.ConfigMap // by name
}

var dsDocSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// parseDSManifest reads the DaemonSet (exactly one) and the ConfigMaps of
// a multi-document manifest. Unknown fields of the Kubernetes types are
// errors, so a typo does not pass as an absent field.
func parseDSManifest(b []byte) (*dsManifest, error) {
	m := &dsManifest{ConfigMaps: map[string]*corev1.ConfigMap{}}
	for i, doc := range dsDocSep.Split(string(b), -1) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		switch head.Kind {
		case "DaemonSet":
			if m.DaemonSet != nil {
				return nil, errors.New("more than one DaemonSet")
			}
			m.DaemonSet = &appsv1.DaemonSet{}
			if err := yaml.UnmarshalStrict([]byte(doc), m.DaemonSet); err != nil {
				return nil, fmt.Errorf("DaemonSet: %w", err)
			}
			if err := yaml.Unmarshal([]byte(doc), &m.raw); err != nil {
				return nil, fmt.Errorf("DaemonSet: %w", err)
			}
		case "ConfigMap":
			cm := &corev1.ConfigMap{}
			if err := yaml.UnmarshalStrict([]byte(doc), cm); err != nil {
				return nil, fmt.Errorf("ConfigMap: %w", err)
			}
			m.ConfigMaps[cm.Name] = cm
		}
	}
	if m.DaemonSet == nil {
		return nil, errors.New("no DaemonSet")
	}
	return m, nil
}

const (
	dsPodPath       = "spec.template.spec"
	dsContainerPath = dsPodPath + ".containers[]"
)

// dsFieldsTranslated are the fields (paths in the DaemonSet, [] for a
// list's items) that the translation below turns into runtime options.
var dsFieldsTranslated = func() map[string]bool {
	m := map[string]bool{}
	for _, p := range []string{
		"apiVersion", "kind", "spec", "spec.template", dsPodPath,
		dsPodPath + ".hostNetwork",
		dsPodPath + ".serviceAccountName",
		dsPodPath + ".containers",
		dsPodPath + ".volumes", dsPodPath + ".volumes[]", dsPodPath + ".volumes[].name",
		dsPodPath + ".volumes[].hostPath", dsPodPath + ".volumes[].hostPath.path", dsPodPath + ".volumes[].hostPath.type",
		dsPodPath + ".volumes[].configMap", dsPodPath + ".volumes[].configMap.name",
		dsContainerPath, dsContainerPath + ".name", dsContainerPath + ".image",
		dsContainerPath + ".command", dsContainerPath + ".command[]",
		dsContainerPath + ".args", dsContainerPath + ".args[]",
		dsContainerPath + ".env", dsContainerPath + ".env[]", dsContainerPath + ".env[].name", dsContainerPath + ".env[].value",
		dsContainerPath + ".env[].valueFrom", dsContainerPath + ".env[].valueFrom.fieldRef",
		dsContainerPath + ".env[].valueFrom.fieldRef.fieldPath", dsContainerPath + ".env[].valueFrom.fieldRef.apiVersion",
		dsContainerPath + ".securityContext", dsContainerPath + ".securityContext.privileged",
		dsContainerPath + ".securityContext.capabilities",
		dsContainerPath + ".securityContext.capabilities.add", dsContainerPath + ".securityContext.capabilities.add[]",
		dsContainerPath + ".securityContext.capabilities.drop", dsContainerPath + ".securityContext.capabilities.drop[]",
		dsContainerPath + ".volumeMounts", dsContainerPath + ".volumeMounts[]", dsContainerPath + ".volumeMounts[].name",
		dsContainerPath + ".volumeMounts[].mountPath", dsContainerPath + ".volumeMounts[].readOnly",
		dsContainerPath + ".resources",
	} {
		m[p] = true
	}
	for _, probe := range []string{".livenessProbe", ".readinessProbe"} {
		for _, f := range []string{"", ".httpGet", ".httpGet.host", ".httpGet.port", ".httpGet.path"} {
			m[dsContainerPath+probe+f] = true
		}
	}
	return m
}()

// dsFieldsSkipped are the fields (with all under them) that no container
// runtime sees, or that this test checks another way.
var dsFieldsSkipped = map[string]string{
	"metadata":                                           "the DaemonSet object's name and labels (POD_NAMESPACE reads its namespace)",
	"spec.selector":                                      "rollout, the DaemonSet controller's",
	"spec.updateStrategy":                                "rollout, the DaemonSet controller's",
	"spec.template.metadata":                             "the pod's labels: no meaning to the runtime",
	dsPodPath + ".affinity":                              "scheduling: on which nodes, not how",
	dsPodPath + ".tolerations":                           "scheduling: on which nodes, not how",
	dsPodPath + ".priorityClassName":                     "scheduling and eviction order",
	dsPodPath + ".initContainers":                        "install-cni: TestImage (dist) runs it with these mounts",
	dsContainerPath + ".imagePullPolicy":                 "the test builds the image in each engine: nothing to pull",
	dsContainerPath + ".resources.requests":              "a scheduling weight, no limit the runtime enforces",
	dsContainerPath + ".livenessProbe.periodSeconds":     "the kubelet's timing: the test probes once, after start",
	dsContainerPath + ".livenessProbe.failureThreshold":  "the kubelet's timing: the test probes once, after start",
	dsContainerPath + ".readinessProbe.periodSeconds":    "the kubelet's timing: the test probes once, after start",
	dsContainerPath + ".readinessProbe.failureThreshold": "the kubelet's timing: the test probes once, after start",
}

// dsUnknownFields returns, sorted, the paths of the fields set in v (under
// at) that the translation neither translates nor skips on purpose.
func dsUnknownFields(at string, v any) []string {
	if _, ok := dsFieldsSkipped[at]; ok {
		return nil
	}
	if at != "" && !dsFieldsTranslated[at] {
		return []string{at}
	}
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			p := k
			if at != "" {
				p = at + "." + k
			}
			out = append(out, dsUnknownFields(p, child)...)
		}
	case []any:
		for _, child := range v {
			out = append(out, dsUnknownFields(at+"[]", child)...)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// dsNode is what the node and its kubelet give the pod beyond the
// manifest, in the lab.
type dsNode struct {
	Name string     // the Node's name (spec.nodeName)
	Addr netip.Addr // its address: the pod's IP with hostNetwork
	// APIServer is the address the kubelet puts in KUBERNETES_SERVICE_HOST
	// and KUBERNETES_SERVICE_PORT (no Service proxy in the lab: the API
	// server's own).
	APIServer netip.AddrPort
	// ServiceAccountDir holds token, ca.crt and namespace, as the kubelet's
	// projected service-account volume does; mounted read-only at
	// /var/run/secrets/kubernetes.io/serviceaccount.
	ServiceAccountDir string
	// HostPath maps a hostPath of the manifest to where it is for this lab
	// host (each host has its own /run/flannel); nil keeps every path.
	HostPath func(string) string
	// ConfigMaps maps a ConfigMap's name to a directory holding its keys.
	ConfigMaps map[string]string
}

// dsHostPath is a hostPath volume as the kubelet checks or creates it
// before the container starts (its type).
type dsHostPath struct {
	Path string // on the lab host
	Type corev1.HostPathType
}

// dsRun is the flanneld container of the DaemonSet as `docker run`
// options and command line.
type dsRun struct {
	Options    []string // before the image
	Entrypoint string   // the container's command[0]; "" keeps the image's
	Args       []string // after the image: command[1:], then args
	Privileged bool
	CapAdd     []string
	CapDrop    []string
	HostPaths  []dsHostPath // to check or create on the host first
	// Probes are the URLs of the kubelet's HTTP probes ("liveness",
	// "readiness"), to GET in the node's network namespace.
	Probes map[string]string
}

const dsServiceAccountMount = "/var/run/secrets/kubernetes.io/serviceaccount"

// translateDS turns the manifest's DaemonSet into the options a runtime
// gets for its one container on node n, Kubernetes' semantics mapped to
// Docker's:
//   - hostNetwork: true → --network host (the lab has no pod network for
//     flanneld: false is refused);
//   - securityContext.privileged → --privileged; capabilities add and drop
//     → --cap-add and --cap-drop, each as given. Without drop, Kubernetes
//     keeps the runtime's default capability set and so does Docker: its
//     default set is containerd's (the 14 of the OCI default spec), which
//     is what a containerd node gives the pod; CRI-O's default is smaller.
//     The mapping is faithful for containerd nodes, and the shipped file
//     drops ALL, where every runtime agrees;
//   - a hostPath volume → -v host:container[:ro], or --device for type
//     CharDevice. The kubelet only bind-mounts the device, and the
//     runtime's default device rules decide access; those of Docker 20.10
//     and runc allow /dev/net/tun (a -v of it passes the udp subtest too),
//     and --device states the access instead of relying on them; a
//     configMap volume → -v of a
//     directory of its keys, read-only as the kubelet mounts it;
//   - env: values as given; fieldRef spec.nodeName, metadata.name (the
//     DaemonSet's name, "-", the node's: the DaemonSet controller's names
//     are random, flanneld only reads them) and metadata.namespace;
//   - the kubelet's additions to every pod with a service account:
//     KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT and the token
//     volume;
//   - command[0] → --entrypoint, command[1:] and args after the image.
//
// Any other field fails with its name.
func translateDS(m *dsManifest, n dsNode) (*dsRun, error) {
	if u := dsUnknownFields("", m.raw); len(u) > 0 {
		return nil, fmt.Errorf("DaemonSet fields the test does not translate: %s", strings.Join(u, ", "))
	}
	ds := m.DaemonSet
	if ds.APIVersion != "apps/v1" {
		return nil, fmt.Errorf("DaemonSet apiVersion %q, want apps/v1", ds.APIVersion)
	}
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		return nil, fmt.Errorf("%s: %d containers, the test runs one", dsPodPath+".containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	r := &dsRun{}
	opt := func(o ...string) { r.Options = append(r.Options, o...) }

	if !pod.HostNetwork {
		return nil, fmt.Errorf("%s.hostNetwork is false: flanneld must run in the node's network namespace", dsPodPath)
	}
	opt("--network", "host")

	if sc := c.SecurityContext; sc != nil {
		if sc.Privileged != nil && *sc.Privileged {
			r.Privileged = true
			opt("--privileged")
		}
		if caps := sc.Capabilities; caps != nil {
			for _, cp := range caps.Drop {
				r.CapDrop = append(r.CapDrop, string(cp))
				opt("--cap-drop", string(cp))
			}
			for _, cp := range caps.Add {
				r.CapAdd = append(r.CapAdd, string(cp))
				opt("--cap-add", string(cp))
			}
		}
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q: no such volume", vm.Name)
		}
		mountPath := path.Clean(vm.MountPath)
		switch {
		case v.HostPath != nil:
			host := v.HostPath.Path
			if n.HostPath != nil {
				host = n.HostPath(host)
			}
			var typ corev1.HostPathType
			if v.HostPath.Type != nil {
				typ = *v.HostPath.Type
			}
			switch typ {
			case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate, corev1.HostPathDirectory,
				corev1.HostPathFileOrCreate, corev1.HostPathFile:
				spec := host + ":" + mountPath
				if vm.ReadOnly {
					spec += ":ro"
				}
				opt("-v", spec)
			case corev1.HostPathCharDev:
				if vm.ReadOnly {
					return nil, fmt.Errorf("volume %q: a read-only CharDevice has no docker run equivalent", v.Name)
				}
				opt("--device", host+":"+mountPath)
			default:
				return nil, fmt.Errorf("volume %q: hostPath type %q is not translated", v.Name, typ)
			}
			r.HostPaths = append(r.HostPaths, dsHostPath{Path: host, Type: typ})
		case v.ConfigMap != nil:
			dir, ok := n.ConfigMaps[v.ConfigMap.Name]
			if !ok {
				return nil, fmt.Errorf("volume %q: no directory for ConfigMap %q", v.Name, v.ConfigMap.Name)
			}
			opt("-v", dir+":"+mountPath+":ro")
		default:
			return nil, fmt.Errorf("volume %q: only hostPath and configMap volumes are translated", v.Name)
		}
	}

	for _, e := range c.Env {
		val := e.Value
		if f := e.ValueFrom; f != nil {
			if f.FieldRef == nil {
				return nil, fmt.Errorf("env %s: only valueFrom.fieldRef is translated", e.Name)
			}
			switch f.FieldRef.FieldPath {
			case "spec.nodeName":
				val = n.Name
			case "metadata.name":
				val = ds.Name + "-" + n.Name
			case "metadata.namespace":
				val = ds.Namespace
			default:
				return nil, fmt.Errorf("env %s: valueFrom.fieldRef.fieldPath %q is not translated", e.Name, f.FieldRef.FieldPath)
			}
		}
		opt("-e", e.Name+"="+val)
	}
	if pod.ServiceAccountName != "" && n.ServiceAccountDir != "" {
		opt("-e", "KUBERNETES_SERVICE_HOST="+n.APIServer.Addr().String(),
			"-e", "KUBERNETES_SERVICE_PORT="+strconv.Itoa(int(n.APIServer.Port())),
			"-v", n.ServiceAccountDir+":"+dsServiceAccountMount+":ro")
	}

	r.Probes = map[string]string{}
	for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil {
			continue
		}
		if p.HTTPGet == nil {
			return nil, fmt.Errorf("%sProbe: only httpGet is translated", kind)
		}
		if p.HTTPGet.Port.Type != intstr.Int {
			return nil, fmt.Errorf("%sProbe: named port %q: the container declares no ports", kind, p.HTTPGet.Port.StrVal)
		}
		host := p.HTTPGet.Host
		if host == "" {
			// The pod's IP, which with hostNetwork is the node's.
			host = n.Addr.String()
		}
		r.Probes[kind] = "http://" + net.JoinHostPort(host, strconv.Itoa(p.HTTPGet.Port.IntValue())) + p.HTTPGet.Path
	}

	if len(c.Command) > 0 {
		r.Entrypoint = c.Command[0]
		r.Args = append(r.Args, c.Command[1:]...)
	}
	r.Args = append(r.Args, c.Args...)
	return r, nil
}

// dockerRun is the argument list of `docker run -d --name NAME` for r,
// with image.
func (r *dsRun) dockerRun(name, image string) []string {
	args := append([]string{"run", "-d", "--name", name}, r.Options...)
	if r.Entrypoint != "" {
		args = append(args, "--entrypoint", r.Entrypoint)
	}
	return append(append(args, image), r.Args...)
}

// prepareHostPaths checks or creates each hostPath as the kubelet does
// for its type before it starts the container.
func (r *dsRun) prepareHostPaths() error {
	for _, h := range r.HostPaths {
		switch h.Type {
		case corev1.HostPathDirectoryOrCreate:
			if err := os.MkdirAll(h.Path, 0o755); err != nil {
				return fmt.Errorf("hostPath %s: %w", h.Path, err)
			}
		case corev1.HostPathFileOrCreate:
			if err := ensureFile(h.Path); err != nil {
				return fmt.Errorf("hostPath %s: %w", h.Path, err)
			}
		case corev1.HostPathUnset:
		default:
			st, err := os.Stat(h.Path)
			if err != nil {
				return fmt.Errorf("hostPath %s (%s): %w", h.Path, h.Type, err)
			}
			ok := map[corev1.HostPathType]bool{
				corev1.HostPathDirectory: st.IsDir(),
				corev1.HostPathFile:      st.Mode().IsRegular(),
				corev1.HostPathCharDev:   st.Mode()&os.ModeCharDevice != 0,
			}[h.Type]
			if !ok {
				return fmt.Errorf("hostPath %s is not a %s (%v)", h.Path, h.Type, st.Mode())
			}
		}
	}
	return nil
}

// writeConfigMapDir writes cm's keys as files into dir, as a configMap
// volume shows them; edit, when set, may change a key's value first.
func writeConfigMapDir(dir string, cm *corev1.ConfigMap, edit func(key, value string) (string, error)) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for k, v := range cm.Data {
		if edit != nil {
			var err error
			if v, err = edit(k, v); err != nil {
				return fmt.Errorf("ConfigMap %s key %s: %w", cm.Name, k, err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// netConfWithBackend returns the network config netConf with Backend.Type set
// to backend, the rest as the manifest has it; without nft it also drops
// EnableNFTables.
func netConfWithBackend(netConf, backend string, nft bool) (string, error) {
	var c map[string]any
	if err := json.Unmarshal([]byte(netConf), &c); err != nil {
		return "", err
	}
	c["Backend"] = map[string]any{"Type": backend}
	if !nft {
		delete(c, "EnableNFTables")
	}
	b, err := json.MarshalIndent(c, "", "  ")
	return string(b), err
}

// withoutMount returns m with the flanneld container's mount at
// mountPath removed, as a user who deletes it from the file would.
func (m *dsManifest) withoutMount(mountPath string) *dsManifest {
	c := *m
	c.DaemonSet = m.DaemonSet.DeepCopy()
	for i := range c.DaemonSet.Spec.Template.Spec.Containers {
		ctr := &c.DaemonSet.Spec.Template.Spec.Containers[i]
		ctr.VolumeMounts = slices.DeleteFunc(ctr.VolumeMounts, func(vm corev1.VolumeMount) bool { return path.Clean(vm.MountPath) == mountPath })
	}
	return &c
}

// TestManifestDaemonSetTranslation translates the shipped DaemonSet and
// checks the permissions issue 14 asks of it: host network, not
// privileged, every default capability dropped, NET_ADMIN and NET_RAW
// added, /run/flannel and the xtables lock from the host, /dev/net/tun
// as a device, the ConfigMap read-only, the kubelet's environment.
func TestManifestDaemonSetTranslation(t *testing.T) {
	m := shippedManifest(t)
	n := dsNode{
		Name:              "n1",
		APIServer:         netip.MustParseAddrPort("10.0.0.1:6443"),
		ServiceAccountDir: "/lab/sa",
		HostPath: func(p string) string {
			if p == "/run/flannel" {
				return "/lab/n1"
			}
			return p
		},
		ConfigMaps: map[string]string{"kube-flannel-cfg": "/lab/cm"},
	}
	r, err := translateDS(m, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("docker %s", strings.Join(r.dockerRun("flanneld", "IMAGE"), " "))
	pairs := map[string]bool{}
	for i := 0; i+1 < len(r.Options); i++ {
		if strings.HasPrefix(r.Options[i], "-") && !strings.HasPrefix(r.Options[i+1], "-") {
			pairs[r.Options[i]+" "+r.Options[i+1]] = true
		}
	}
	for _, want := range []string{
		"--network host",
		"--cap-drop ALL", "--cap-add NET_ADMIN", "--cap-add NET_RAW",
		"-v /lab/n1:/run/flannel",
		"-v /run/xtables.lock:/run/xtables.lock",
		"--device /dev/net/tun:/dev/net/tun",
		"-v /lab/cm:/etc/kube-flannel:ro",
		"-e NODE_NAME=n1", "-e POD_NAME=kube-flannel-ds-n1", "-e POD_NAMESPACE=kube-flannel",
		"-e KUBERNETES_SERVICE_HOST=10.0.0.1", "-e KUBERNETES_SERVICE_PORT=6443",
		"-v /lab/sa:" + dsServiceAccountMount + ":ro",
	} {
		if !pairs[want] {
			t.Errorf("options lack %q: %q", want, r.Options)
		}
	}
	if slices.Contains(r.Options, "--privileged") || r.Privileged {
		t.Errorf("privileged: %q", r.Options)
	}
	if r.Entrypoint != "/opt/bin/flanneld" || !slices.Contains(r.Args, "--kube-subnet-mgr") || !slices.Contains(r.Args, "--ip-masq") {
		t.Errorf("command line: %s %q", r.Entrypoint, r.Args)
	}
	for _, kind := range []string{"liveness", "readiness"} {
		if u, ok := r.Probes[kind]; !ok || !strings.HasPrefix(u, "http://127.0.0.1:") {
			t.Errorf("%s probe: %q, want one on the node's loopback", kind, u)
		}
	}
	if set, err := r.boundingSet(); err != nil || set != 1<<unix.CAP_NET_ADMIN|1<<unix.CAP_NET_RAW {
		t.Errorf("bounding set %#x, %v; want NET_ADMIN and NET_RAW", set, err)
	}
	keeps := *r
	keeps.CapDrop = nil
	if _, err := keeps.boundingSet(); err == nil || !strings.Contains(err.Error(), "default set") {
		t.Errorf("without drop ALL: %v, want an error about the runtime's default set", err)
	}
	var tun bool
	for _, h := range r.HostPaths {
		tun = tun || (h.Path == "/dev/net/tun" && h.Type == corev1.HostPathCharDev)
	}
	if !tun {
		t.Errorf("no CharDevice hostPath /dev/net/tun: %+v", r.HostPaths)
	}
	if r := m.withoutMount("/dev/net/tun"); slices.ContainsFunc(mustTranslate(t, r, n).Options, func(o string) bool { return o == "--device" }) {
		t.Error("withoutMount kept the device")
	}
}

func mustTranslate(t *testing.T, m *dsManifest, n dsNode) *dsRun {
	t.Helper()
	r, err := translateDS(m, n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestManifestUnknownField: a change to the DaemonSet that the
// translation does not know fails with the field's name, so that
// TestContainerDaemonSet cannot run something other than the file says.
func TestManifestUnknownField(t *testing.T) {
	b, err := os.ReadFile("../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	file := string(b)
	n := dsNode{Name: "n1", ConfigMaps: map[string]string{"kube-flannel-cfg": "/cm"}}
	for _, tt := range []struct {
		name, old, new, want string
	}{
		{"pod field", "      hostNetwork: true\n", "      hostNetwork: true\n      hostPID: true\n", "spec.template.spec.hostPID"},
		{"securityContext field", "            privileged: false\n", "            privileged: false\n            readOnlyRootFilesystem: true\n",
			"spec.template.spec.containers[].securityContext.readOnlyRootFilesystem"},
		{"mount field", "              mountPath: /run/flannel\n", "              mountPath: /run/flannel\n              subPath: x\n",
			"spec.template.spec.containers[].volumeMounts[].subPath"},
		{"volume kind", "        - name: run\n          hostPath:\n            path: /run/flannel\n            type: DirectoryOrCreate\n",
			"        - name: run\n          emptyDir: {}\n", "spec.template.spec.volumes[].emptyDir"},
		{"resource limit", "            requests:\n", "            limits:\n              memory: 50Mi\n            requests:\n",
			"spec.template.spec.containers[].resources.limits"},
		{"fieldRef path", "                  fieldPath: metadata.name\n", "                  fieldPath: status.podIP\n", `"status.podIP"`},
		{"hostPath type", "            type: FileOrCreate\n", "            type: Socket\n", `"Socket"`},
		{"probe kind", "              path: /healthz\n", "              path: /healthz\n            timeoutSeconds: 3\n",
			"spec.template.spec.containers[].livenessProbe.timeoutSeconds"},
		{"named probe port", "              port: 10266\n              path: /readyz\n", "              port: healthz\n              path: /readyz\n", `named port "healthz"`},
		{"host network", "      hostNetwork: true\n", "      hostNetwork: false\n", "hostNetwork is false"},
		{"Kubernetes field misspelt", "      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwrk: true\n", "hostNetwrk"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(file, tt.old) {
				t.Fatalf("the manifest no longer has %q: update the test", tt.old)
			}
			m, err := parseDSManifest([]byte(strings.Replace(file, tt.old, tt.new, 1)))
			if err == nil {
				_, err = translateDS(m, n)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to name %s", err, tt.want)
			}
		})
	}
}

// TestManifestDryRun: a real API server accepts dist/kube-flannel.yml
// (kubectl apply --dry-run=server, strict field validation), so no field
// of it is misspelt or of the wrong type for Kubernetes itself.
func TestManifestDryRun(t *testing.T) {
	api := kubetest.Start(t, kubeapi.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A dry run creates nothing, so the objects in the manifest's
	// namespace would find it missing: the namespace is created for real
	// (the dry run then checks its document as an update).
	m := shippedManifest(t)
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: m.DaemonSet.Namespace}}
	if _, err := kubetest.Client(t, api).CoreV1().Namespaces().Create(ctx, nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", api.Kubeconfig,
		"apply", "--dry-run=server", "--validate=strict", "-f", "../dist/kube-flannel.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "daemonset.apps/kube-flannel-ds created (server dry run)") {
		t.Errorf("kubectl apply --dry-run=server said:\n%s", out)
	}
}

// dsCapNumbers are the capabilities a manifest may name, by number.
var dsCapNumbers = map[string]int{
	"AUDIT_WRITE": unix.CAP_AUDIT_WRITE, "BPF": unix.CAP_BPF, "CHOWN": unix.CAP_CHOWN,
	"DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "IPC_LOCK": unix.CAP_IPC_LOCK,
	"KILL": unix.CAP_KILL, "MKNOD": unix.CAP_MKNOD, "NET_ADMIN": unix.CAP_NET_ADMIN,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_BROADCAST": unix.CAP_NET_BROADCAST,
	"NET_RAW": unix.CAP_NET_RAW, "PERFMON": unix.CAP_PERFMON, "SETFCAP": unix.CAP_SETFCAP,
	"SETGID": unix.CAP_SETGID, "SETPCAP": unix.CAP_SETPCAP, "SETUID": unix.CAP_SETUID,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_CHROOT": unix.CAP_SYS_CHROOT, "SYS_MODULE": unix.CAP_SYS_MODULE,
	"SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
}

// boundingSet is the capability bounding set (as /proc/PID/status shows
// it) that r gives the container's process. Only a set that drops ALL is
// fully given by the manifest: otherwise the runtime's default set is in
// it too, which flanneld needs none of, so that is an error here.
func (r *dsRun) boundingSet() (uint64, error) {
	if !slices.Contains(r.CapDrop, "ALL") {
		return 0, fmt.Errorf("capabilities drop %q, not ALL: the container keeps the runtime's default set, which flanneld does not use", r.CapDrop)
	}
	var set uint64
	for _, name := range r.CapAdd {
		n, ok := dsCapNumbers[strings.TrimPrefix(name, "CAP_")]
		if !ok {
			return 0, fmt.Errorf("capability %q is not known to the test", name)
		}
		set |= 1 << n
	}
	return set, nil
}

// assertPodConfined checks process pid runs as r says: its bounding set
// exactly the capabilities added, and /proc/sys and /sys read-only, as a
// container runtime mounts them for a container that is not privileged.
func assertPodConfined(t *testing.T, name string, pid int, r *dsRun) {
	t.Helper()
	want, err := r.boundingSet()
	if err != nil {
		t.Errorf("dist/kube-flannel.yml: %v", err)
		return
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if line := fmt.Sprintf("CapBnd:\t%016x\n", want); !strings.Contains(string(st), line) {
		t.Errorf("%s: flanneld's bounding set is not %q (%v):\n%s", name, strings.TrimSpace(line), r.CapAdd, st)
	}
	if r.Privileged {
		return
	}
	checkSysReadOnly(t, name, pid)
}
