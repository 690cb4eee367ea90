package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/flannel-go/flannel/internal/cni"
)

// fakeExec stands in for the delegate plugins (invoke.Exec).
type fakeExec struct {
	calls []call
	fail  error // returned by every ExecPlugin when set
}

type call struct {
	plugin, command string
	stdin           []byte
}

func (f *fakeExec) ExecPlugin(_ context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var cmd string
	for _, e := range environ {
		if v, ok := strings.CutPrefix(e, "CNI_COMMAND="); ok {
			cmd = v
		}
	}
	f.calls = append(f.calls, call{filepath.Base(pluginPath), cmd, stdin})
	if f.fail != nil {
		return nil, f.fail
	}
	if cmd != "ADD" {
		return nil, nil
	}
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"cniVersion": %q, "ips": [{"address": "10.1.17.2/24", "gateway": "10.1.17.1"}],
		"routes": [{"dst": "10.1.0.0/16", "gw": "10.1.17.1"}]}`, c.CNIVersion), nil
}

func (f *fakeExec) FindInPath(plugin string, _ []string) (string, error) {
	return "/fake/" + plugin, nil
}

func (f *fakeExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

type fixture struct {
	dir, subnetFile, dataDir string
	exec                     *fakeExec
	stdout                   bytes.Buffer
	plugin                   *cni.Plugin
}

func newFixture(t testing.TB) *fixture {
	dir := t.TempDir()
	f := &fixture{
		dir:        dir,
		subnetFile: filepath.Join(dir, "subnet.env"),
		dataDir:    filepath.Join(dir, "data"),
		exec:       &fakeExec{},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.plugin = cni.New(log, &f.stdout, f.exec)
	return f
}

func (f *fixture) args(id, version string, extra string) *skel.CmdArgs {
	conf := fmt.Sprintf(`{"cniVersion": %q, "name": "cbr0", "type": "flannel", "subnetFile": %q, "dataDir": %q%s}`,
		version, f.subnetFile, f.dataDir, extra)
	return &skel.CmdArgs{ContainerID: id, Netns: "/var/run/netns/x", IfName: "eth0", StdinData: []byte(conf)}
}

func (f *fixture) writeEnv(t testing.TB, s string) {
	t.Helper()
	if err := os.WriteFile(f.subnetFile, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return te
}

func TestAddDelLifecycle(t *testing.T) {
	f := newFixture(t)
	f.writeEnv(t, envV4)
	ctx := context.Background()
	args := f.args("c1", "1.0.0", "")

	if err := f.plugin.Add(ctx, args); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	want := `{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}`
	if c := f.exec.calls; len(c) != 1 || c[0].plugin != "bridge" || c[0].command != "ADD" || string(c[0].stdin) != want {
		t.Fatalf("delegate calls = %q, want one bridge ADD with %s", f.exec.calls, want)
	}
	saved := filepath.Join(f.dataDir, "c1")
	b, err := os.ReadFile(saved)
	if err != nil || string(b) != want {
		t.Fatalf("saved configuration = %s, %v; want %s", b, err, want)
	}
	if st, _ := os.Stat(saved); st.Mode().Perm() != 0o600 {
		t.Errorf("saved configuration mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(f.dataDir); st.Mode().Perm() != 0o700 {
		t.Errorf("dataDir mode %v, want 0700", st.Mode().Perm())
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct{ Address string }
	}
	if err := json.Unmarshal(f.stdout.Bytes(), &res); err != nil || res.CNIVersion != "1.0.0" || len(res.IPs) != 1 || res.IPs[0].Address != "10.1.17.2/24" {
		t.Errorf("ADD printed %s (%v), want the delegate's 1.0.0 result", f.stdout.Bytes(), err)
	}

	// subnet.env changes (a new lease); DEL still uses what ADD used.
	f.writeEnv(t, envKube)
	if err := f.plugin.Del(ctx, args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := f.exec.calls[1]; got.plugin != "bridge" || got.command != "DEL" || string(got.stdin) != want {
		t.Errorf("DEL delegated %s %s %s, want bridge DEL with the saved configuration", got.plugin, got.command, got.stdin)
	}
	if _, err := os.Stat(saved); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("saved configuration still there after DEL: %v", err)
	}
	if err := f.plugin.Del(ctx, args); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if len(f.exec.calls) != 2 {
		t.Errorf("second DEL delegated: %q", f.exec.calls[2:])
	}
	if entries, _ := os.ReadDir(f.dataDir); len(entries) != 0 {
		t.Errorf("dataDir holds %v after DEL", entries)
	}
}

func TestAddResultVersion(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			f := newFixture(t)
			f.writeEnv(t, envDual)
			if err := f.plugin.Add(context.Background(), f.args("c1", v, "")); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			var res struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(f.stdout.Bytes(), &res); err != nil || res.CNIVersion != v {
				t.Errorf("result %s, want version %s", f.stdout.Bytes(), v)
			}
		})
	}
}

func TestAddSubnetEnvErrors(t *testing.T) {
	tests := []struct {
		name, env string // env "" means no file
		code      uint
		msg       []string
	}{
		{"missing", "", types.ErrTryAgainLater, []string{"subnet.env does not exist", "no such file or directory"}},
		{"malformed", "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=banana\n", types.ErrInternal, []string{"subnet.env is malformed", "FLANNEL_SUBNET", "line 2"}},
		{"incomplete", "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n", types.ErrInternal, []string{"subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.env != "" {
				f.writeEnv(t, tt.env)
			}
			err := f.plugin.Add(context.Background(), f.args("c1", "1.0.0", ""))
			te := cniError(t, err)
			if te.Code != tt.code {
				t.Errorf("code %d, want %d", te.Code, tt.code)
			}
			for _, s := range append(tt.msg, f.subnetFile) {
				if !strings.Contains(te.Msg, s) {
					t.Errorf("message %q does not contain %q", te.Msg, s)
				}
			}
			for _, s := range []string{"flanneld is running", `"subnetFile"`} {
				if !strings.Contains(te.Details, s) {
					t.Errorf("details %q do not say %q", te.Details, s)
				}
			}
			if len(f.exec.calls) != 0 {
				t.Errorf("delegated despite the error: %q", f.exec.calls)
			}
			if _, err := os.Stat(filepath.Join(f.dataDir, "c1")); err == nil {
				t.Errorf("saved a configuration despite the error")
			}
		})
	}
}

func TestAddConfErrors(t *testing.T) {
	f := newFixture(t)
	f.writeEnv(t, envV4)
	err := f.plugin.Add(context.Background(), f.args("c1", "1.0.0", `, "delegate": {"name": "x"}`))
	if te := cniError(t, err); te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "'name'") {
		t.Errorf("error %v, want invalid network config about 'name'", te)
	}
	err = f.plugin.Add(context.Background(), &skel.CmdArgs{ContainerID: "c1", StdinData: []byte(`{"delegate": 1}`)})
	if te := cniError(t, err); te.Code != types.ErrDecodingFailure {
		t.Errorf("error %v, want a decoding failure", te)
	}
}

func TestDelegateFailure(t *testing.T) {
	f := newFixture(t)
	f.writeEnv(t, envV4)
	ctx := context.Background()
	args := f.args("c1", "1.0.0", "")
	f.exec.fail = types.NewError(types.ErrTryAgainLater, "busy", "try later")
	te := cniError(t, f.plugin.Add(ctx, args))
	if te.Code != types.ErrTryAgainLater || te.Msg != "flannel: delegate bridge ADD: busy" || te.Details != "try later" {
		t.Errorf("ADD error %+v, want the delegate's code and details, named", te)
	}
	// The configuration stays for the runtime's DEL, which undoes the
	// half-done ADD; a failed DEL keeps it for the retry.
	saved := filepath.Join(f.dataDir, "c1")
	if _, err := os.Stat(saved); err != nil {
		t.Fatalf("configuration not saved after a failed ADD: %v", err)
	}
	if err := f.plugin.Del(ctx, args); err == nil {
		t.Fatalf("DEL succeeded though the delegate failed")
	}
	if _, err := os.Stat(saved); err != nil {
		t.Fatalf("configuration removed after a failed DEL: %v", err)
	}
	f.exec.fail = nil
	if err := f.plugin.Del(ctx, args); err != nil {
		t.Fatalf("DEL retry: %v", err)
	}
	if _, err := os.Stat(saved); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("configuration still there after DEL: %v", err)
	}
}

func TestDelUnusableState(t *testing.T) {
	f := newFixture(t)
	if err := cni.SaveState(f.dataDir, "c1", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if err := f.plugin.Del(context.Background(), f.args("c1", "1.0.0", "")); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if len(f.exec.calls) != 0 {
		t.Errorf("delegated with an unusable configuration: %q", f.exec.calls)
	}
	if _, err := os.Stat(filepath.Join(f.dataDir, "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unusable configuration left behind: %v", err)
	}
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	f.writeEnv(t, envV4)
	ctx := context.Background()
	if err := f.plugin.Add(ctx, f.args("c1", "1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	prev := `{"cniVersion":"1.1.0","ips":[{"address":"10.1.17.2/24"}]}`
	if err := f.plugin.Check(ctx, f.args("c1", "1.1.0", `, "prevResult": `+prev)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	got := f.exec.calls[len(f.exec.calls)-1]
	var m map[string]json.RawMessage
	if err := json.Unmarshal(got.stdin, &m); err != nil {
		t.Fatal(err)
	}
	if got.command != "CHECK" || got.plugin != "bridge" || string(m["prevResult"]) != prev || string(m["cniVersion"]) != `"1.1.0"` || string(m["mtu"]) != "1472" {
		t.Errorf("CHECK delegated %s %s %s; want bridge CHECK with the saved configuration, prevResult and version", got.plugin, got.command, got.stdin)
	}
	f.exec.fail = types.NewError(types.ErrInternal, "veth gone", "")
	if te := cniError(t, f.plugin.Check(ctx, f.args("c1", "1.1.0", ""))); !strings.Contains(te.Msg, "veth gone") {
		t.Errorf("CHECK error %v, want the delegate's", te)
	}
	f.exec.fail = nil
	if err := f.plugin.Check(ctx, f.args("other", "1.1.0", "")); err == nil || !strings.Contains(err.Error(), "no saved configuration") {
		t.Errorf("CHECK of an unknown container: %v", err)
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	args := f.args("", "1.1.0", "")
	te := cniError(t, f.plugin.Status(ctx, args))
	if te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, f.subnetFile) || !strings.Contains(te.Details, "flanneld") {
		t.Errorf("STATUS without subnet.env: %+v, want code 50 naming the file and flanneld", te)
	}
	f.writeEnv(t, "FLANNEL_NETWORK=10.1.0.0/16\n")
	if te := cniError(t, f.plugin.Status(ctx, args)); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "missing") {
		t.Errorf("STATUS with an incomplete subnet.env: %+v", te)
	}
	f.writeEnv(t, "FLANNEL_MTU=x\n")
	if te := cniError(t, f.plugin.Status(ctx, args)); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "malformed") {
		t.Errorf("STATUS with a malformed subnet.env: %+v", te)
	}
	f.writeEnv(t, envDual)
	if err := f.plugin.Status(ctx, args); err != nil {
		t.Errorf("STATUS with subnet.env: %v", err)
	}
}

func TestVersions(t *testing.T) {
	want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	if got := cni.Versions.SupportedVersions(); !slices.Equal(got, want) {
		t.Errorf("Versions = %v, want %v", got, want)
	}
}

// CHECK asks for the routes as the delegate installed them: a route
// without a gateway goes via the interface's gateway of its family
// (containernetworking/plugins#886).
func TestCheckFillsRouteGateways(t *testing.T) {
	tests := []struct{ version, prev, wantRoutes string }{
		{"1.0.0",
			`{"cniVersion":"1.0.0","ips":[{"address":"10.1.17.2/24","gateway":"10.1.17.1"},{"address":"fc00::2/64","gateway":"fc00::1"}],
			  "routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"},{"dst":"10.96.0.0/12","gw":"10.1.17.20"}]}`,
			`[{"dst":"10.1.0.0/16","gw":"10.1.17.1"},{"dst":"fc00::/48","gw":"fc00::1"},{"dst":"10.96.0.0/12","gw":"10.1.17.20"}]`},
		{"0.4.0",
			`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.17.2/24","gateway":"10.1.17.1"}],"routes":[{"dst":"10.1.0.0/16"}]}`,
			`[{"dst":"10.1.0.0/16","gw":"10.1.17.1"}]`},
		// nothing to fill: passed on as the runtime sent it
		{"1.0.0", `{"cniVersion":"1.0.0","ips":[{"address":"10.1.17.2/24"}],"routes":[{"dst":"10.1.0.0/16"}]}`,
			`[{"dst":"10.1.0.0/16"}]`},
	}
	for _, tt := range tests {
		f := newFixture(t)
		f.writeEnv(t, envV4)
		ctx := context.Background()
		if err := f.plugin.Add(ctx, f.args("c1", tt.version, "")); err != nil {
			t.Fatal(err)
		}
		if err := f.plugin.Check(ctx, f.args("c1", tt.version, `, "prevResult": `+tt.prev)); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		var got struct {
			PrevResult struct {
				CNIVersion string          `json:"cniVersion"`
				Routes     json.RawMessage `json:"routes"`
			} `json:"prevResult"`
		}
		if err := json.Unmarshal(f.exec.calls[len(f.exec.calls)-1].stdin, &got); err != nil {
			t.Fatal(err)
		}
		if string(got.PrevResult.Routes) != tt.wantRoutes || got.PrevResult.CNIVersion != tt.version {
			t.Errorf("%s: delegate's prevResult %s routes %s, want %s", tt.version, got.PrevResult.CNIVersion, got.PrevResult.Routes, tt.wantRoutes)
		}
	}
}

// After flanneld takes a new lease, CHECK reports the pod as stranded in
// the old subnet; with subnet.env briefly gone it only asks the delegate.
func TestCheckSubnetChanged(t *testing.T) {
	f := newFixture(t)
	f.writeEnv(t, envV4)
	ctx := context.Background()
	if err := f.plugin.Add(ctx, f.args("c1", "1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	f.writeEnv(t, envDual) // same IPv4 lease, IPv6 added
	if err := f.plugin.Check(ctx, f.args("c1", "1.0.0", "")); err == nil || !strings.Contains(err.Error(), "10.1.17.0/24, fc00::/64") {
		t.Errorf("CHECK after an IPv6 subnet was added: %v", err)
	}
	f.writeEnv(t, envKube)
	err := f.plugin.Check(ctx, f.args("c1", "1.0.0", ""))
	if te := cniError(t, err); !strings.Contains(te.Msg, "set up in subnet 10.1.17.0/24, but this node's subnet is now 10.244.1.0/24") ||
		!strings.Contains(te.Details, "recreate the pod") {
		t.Errorf("CHECK after a new lease: %+v", te)
	}
	if err := os.Remove(f.subnetFile); err != nil {
		t.Fatal(err)
	}
	if err := f.plugin.Check(ctx, f.args("c1", "1.0.0", "")); err != nil {
		t.Errorf("CHECK without subnet.env: %v", err)
	}
}

// FuzzCheck feeds CHECK arbitrary runtime input (the configuration with
// its prevResult) against a saved configuration: no panic, and the
// delegate always gets a JSON object.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"cbr0","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.17.2/24","gateway":"10.1.17.1"}],"routes":[{"dst":"10.1.0.0/16"}]}}`,
		`{"cniVersion":"0.4.0","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.17.2/24","gateway":"10.1.17.1"}],"routes":[{"dst":"::/0"}]}}`,
		`{"cniVersion":"1.1.0","prevResult":{"routes":[null]}}`,
		`{"cniVersion":"9.9.9","prevResult":[]}`,
	} {
		f.Add([]byte(s))
	}
	// One fixture for every input: CHECK changes no state, and a file
	// system per input would make the target too slow to explore.
	fx := newFixture(f)
	fx.writeEnv(f, envV4)
	if err := cni.SaveState(fx.dataDir, "c1", []byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"bridge","ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]]}}`)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fx.exec.calls = nil
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil || m == nil { // not an object ("null" is no config)
			return
		}
		m["subnetFile"], _ = json.Marshal(fx.subnetFile)
		m["dataDir"], _ = json.Marshal(fx.dataDir)
		stdin, _ := json.Marshal(m)
		if err := fx.plugin.Check(context.Background(), &skel.CmdArgs{ContainerID: "c1", StdinData: stdin}); err != nil {
			return
		}
		var got map[string]any
		if err := json.Unmarshal(fx.exec.calls[0].stdin, &got); err != nil {
			t.Fatalf("delegate got %s: %v", fx.exec.calls[0].stdin, err)
		}
	})
}
