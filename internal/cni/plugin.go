package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/flannel-go/flannel/internal/subnetenv"
	"github.com/flannel-go/flannel/internal/version"
)

// Versions are the CNI specification versions the plugin speaks. CHECK
// needs 0.4.0 and STATUS 1.1.0; skel refuses them for older
// configurations.
var Versions = cniversion.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is what the plugin prints when run without CNI_COMMAND.
func About() string {
	return "flannel CNI plugin " + version.Version
}

// Plugin runs the CNI commands. Its methods take skel's arguments, so skel
// supplies the environment and stdin; output goes to Stdout.
type Plugin struct {
	log    *slog.Logger
	stdout io.Writer
	exec   invoke.Exec
}

// New returns a Plugin that prints results to stdout and logs to log. exec
// runs the delegate plugins; nil means the real binaries found in CNI_PATH
// (tests pass a fake).
func New(log *slog.Logger, stdout io.Writer, exec invoke.Exec) *Plugin {
	return &Plugin{log: log, stdout: stdout, exec: exec}
}

// Funcs binds the commands to ctx for skel.PluginMainFuncs. GC is not
// implemented: the state files are removed by DEL, and a runtime's GC
// cannot tell us which of them it still means to DEL.
func (p *Plugin) Funcs(ctx context.Context) skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return p.Add(ctx, a) },
		Del:    func(a *skel.CmdArgs) error { return p.Del(ctx, a) },
		Check:  func(a *skel.CmdArgs) error { return p.Check(ctx, a) },
		Status: func(a *skel.CmdArgs) error { return p.Status(ctx, a) },
	}
}

// Add builds the delegate configuration from subnet.env, saves it under
// dataDir and runs the delegate's ADD, printing its result.
func (p *Plugin) Add(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	env, terr := loadSubnetEnv(conf.SubnetFile, types.ErrTryAgainLater)
	if terr != nil {
		return terr
	}
	d, err := BuildDelegate(conf, env)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	// Saved before the delegate runs: if ADD fails halfway, the runtime's
	// DEL needs it to undo what was done.
	if err := SaveState(conf.DataDir, args.ContainerID, d.Conf); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	p.log.Debug("delegating ADD", "container", args.ContainerID, "type", d.Type, "conf", string(d.Conf))
	res, err := invoke.DelegateAdd(ctx, d.Type, d.Conf, p.exec)
	if err != nil {
		return delegateError(d.Type, "ADD", err)
	}
	if conf.CNIVersion != "" {
		if res, err = res.GetAsVersion(conf.CNIVersion); err != nil {
			return fmt.Errorf("flannel: convert the %s result to CNI %s: %w", d.Type, conf.CNIVersion, err)
		}
	}
	return res.PrintTo(p.stdout)
}

// Del runs the delegate's DEL with the configuration ADD saved, then
// removes it. Without a saved configuration there is nothing to undo, so
// it succeeds: DEL may come twice, or for an ADD that never ran.
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	saved, err := LoadState(conf.DataDir, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		p.log.Debug("DEL: no saved configuration; nothing to do", "container", args.ContainerID, "dataDir", conf.DataDir)
		return nil
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	typ, err := delegateType(saved)
	if err != nil {
		// Nothing can use this file, so keeping it would only leave it
		// behind for good; the container's interface goes with its netns.
		p.log.Warn("DEL: saved configuration unusable; removing it without delegating",
			"container", args.ContainerID, "dataDir", conf.DataDir, "err", err)
		return p.removeState(conf.DataDir, args.ContainerID)
	}
	if err := invoke.DelegateDel(ctx, typ, saved, p.exec); err != nil {
		return delegateError(typ, "DEL", err)
	}
	return p.removeState(conf.DataDir, args.ContainerID)
}

// removeState removes the saved configuration after a successful DEL; a
// failure is logged, not returned: the delegate's work is done, and a DEL
// retried on an error would find the file and delegate again.
func (p *Plugin) removeState(dataDir, containerID string) error {
	if err := RemoveState(dataDir, containerID); err != nil {
		p.log.Warn("DEL: cannot remove saved configuration", "container", containerID, "err", err)
	}
	return nil
}

// Check runs the delegate's CHECK with the configuration ADD saved and the
// runtime's cached result (the delegate needs it to know what to check),
// after checking that the pod's subnet is still the node's.
func (p *Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	saved, err := LoadState(conf.DataDir, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("flannel: no saved configuration for container %s in %s", args.ContainerID, conf.DataDir),
			"ADD did not succeed for this container, or DEL already ran")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	typ, checkConf, err := checkConfig(saved, conf)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	// A pod left in a subnet the node no longer owns is unreachable from
	// other nodes however healthy its veth is. Without a usable
	// subnet.env (flanneld restarting) there is nothing to compare with.
	if env, terr := loadSubnetEnv(conf.SubnetFile, types.ErrTryAgainLater); terr == nil {
		if err := sameSubnets(saved, env); err != nil {
			return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: container %s: %v", args.ContainerID, err),
				"flanneld holds a different lease than when the pod was created (subnet.env changed); recreate the pod")
		}
	}
	if err := invoke.DelegateCheck(ctx, typ, checkConf, p.exec); err != nil {
		return delegateError(typ, "CHECK", err)
	}
	return nil
}

// Status reports whether ADD can succeed now: it cannot until flanneld has
// written a complete subnet.env, and a runtime that asks STATUS then waits
// instead of failing pods.
func (p *Plugin) Status(_ context.Context, args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, terr := loadSubnetEnv(conf.SubnetFile, types.ErrPluginNotAvailable); terr != nil {
		return terr
	}
	return nil
}

func parseConf(b []byte) (*NetConf, error) {
	c, err := ParseConf(b)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	return c, nil
}

// checkAdvice is what to look at when subnet.env is unusable; the last
// part answers the most common cause after "flanneld not ready yet".
const checkAdvice = "flanneld writes this file once it holds a subnet lease for this node: " +
	"check that flanneld is running and ready on this node (its log, /readyz), and that " +
	`"subnetFile" in the CNI configuration names the file flanneld writes (flanneld --subnet-file)`

// loadSubnetEnv reads subnet.env, or explains why it cannot be used. A
// missing file gets notYetCode: the normal state while flanneld starts.
func loadSubnetEnv(path string, notYetCode uint) (subnetenv.Full, *types.Error) {
	env, err := subnetenv.ReadFull(path)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return env, types.NewError(notYetCode,
			fmt.Sprintf("flannel: subnet file %s does not exist yet (loadFlannelSubnetEnv failed: open %s: no such file or directory)", path, path),
			checkAdvice)
	case errors.As(err, &pe):
		return env, types.NewError(orCode(notYetCode, types.ErrIOFailure),
			fmt.Sprintf("flannel: cannot read subnet file %s: %v", path, pe.Err), checkAdvice)
	case err != nil:
		return env, types.NewError(orCode(notYetCode, types.ErrInternal),
			fmt.Sprintf("flannel: subnet file %s is malformed: %s", path, strings.TrimPrefix(err.Error(), "subnetenv: ")),
			checkAdvice)
	case len(env.Missing) > 0:
		return env, types.NewError(orCode(notYetCode, types.ErrInternal),
			fmt.Sprintf("flannel: subnet file %s is missing %s", path, strings.Join(env.Missing, ", ")),
			checkAdvice)
	}
	return env, nil
}

// orCode keeps STATUS's one code (not available) for every reason, and
// gives the other commands the code that fits the reason.
func orCode(notYetCode, code uint) uint {
	if notYetCode == types.ErrPluginNotAvailable {
		return notYetCode
	}
	return code
}

// delegateError names the delegate and the command in its error, keeping
// the delegate's CNI error code.
func delegateError(typ, cmd string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return types.NewError(te.Code, fmt.Sprintf("flannel: delegate %s %s: %s", typ, cmd, te.Msg), te.Details)
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: delegate %s %s: %v", typ, cmd, err),
		"the delegate plugin must be in a directory of CNI_PATH")
}

// delegateType reads the plugin type from a saved configuration.
func delegateType(conf []byte) (string, error) {
	var nc types.NetConf
	if err := json.Unmarshal(conf, &nc); err != nil {
		return "", fmt.Errorf("parse saved configuration: %w", err)
	}
	if nc.Type == "" {
		return "", errors.New("saved configuration has no type")
	}
	return nc.Type, nil
}

// checkConfig returns the delegate's CHECK configuration: the saved one
// with the runtime's prevResult and cniVersion, which CHECK is about.
func checkConfig(saved []byte, conf *NetConf) (string, []byte, error) {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(saved))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return "", nil, fmt.Errorf("flannel: parse saved configuration: %w", err)
	}
	typ, _ := m["type"].(string)
	if typ == "" {
		return "", nil, errors.New("flannel: saved configuration has no type")
	}
	if conf.PrevResult != nil {
		m["prevResult"] = withRouteGateways(conf.PrevResult, conf.CNIVersion)
	}
	if conf.CNIVersion != "" {
		m["cniVersion"] = conf.CNIVersion
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", nil, fmt.Errorf("flannel: render CHECK configuration: %w", err)
	}
	return typ, b, nil
}

// withRouteGateways returns prev with each route that has no gateway given
// the first gateway of its family among the result's IPs: the gateway the
// delegate installed it through (a route without "gw" goes via the
// interface's gateway). CHECK then asks for exactly the route the kernel
// has; bridge and ptp up to plugins v1.2 look for a route without a
// gateway and fail on every flannel pod otherwise (containernetworking/
// plugins#886). If prev cannot be read it is returned as it is, for the
// delegate to judge.
func withRouteGateways(prev json.RawMessage, cniVersion string) json.RawMessage {
	if cniVersion == "" {
		return prev
	}
	r, err := cniversion.NewResult(cniVersion, prev)
	if err != nil {
		return prev
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return prev
	}
	var v4gw, v6gw net.IP
	for _, ip := range res.IPs {
		switch {
		case ip.Gateway == nil:
		case ip.Gateway.To4() != nil && v4gw == nil:
			v4gw = ip.Gateway
		case ip.Gateway.To4() == nil && v6gw == nil:
			v6gw = ip.Gateway
		}
	}
	changed := false
	for _, rt := range res.Routes {
		if rt == nil || rt.GW != nil {
			continue
		}
		gw := v6gw
		if rt.Dst.IP.To4() != nil {
			gw = v4gw
		}
		if gw != nil {
			rt.GW = gw
			changed = true
		}
	}
	if !changed {
		return prev
	}
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return prev
	}
	b, err := json.Marshal(out)
	if err != nil {
		return prev
	}
	return b
}

// sameSubnets checks that the ranges the saved configuration gave the pod
// are this node's subnets in env.
func sameSubnets(saved []byte, env subnetenv.Full) error {
	var c struct {
		IPAM struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(saved, &c); err != nil {
		return fmt.Errorf("parse saved configuration: %w", err)
	}
	var had []string
	for _, r := range c.IPAM.Ranges {
		for _, s := range r {
			had = append(had, s.Subnet)
		}
	}
	var now []string
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			now = append(now, sn.Masked().String())
		}
	}
	if !slices.Equal(had, now) {
		return fmt.Errorf("set up in subnet %s, but this node's subnet is now %s",
			strings.Join(had, ", "), strings.Join(now, ", "))
	}
	return nil
}
