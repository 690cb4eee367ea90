// Package dist holds the operator files (systemd units, sysconfig, Docker
// drop-in, mk-docker-opts.sh); its tests run the script and `make install`.
package dist

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const script = "mk-docker-opts.sh"

// shells returns every POSIX shell to run the script under: /bin/sh (dash on
// Debian) and bash when it is installed.
func shells(t *testing.T) []string {
	t.Helper()
	out := []string{"/bin/sh"}
	if p, err := exec.LookPath("bash"); err == nil {
		out = append(out, p)
	} else {
		t.Log("bash not found: testing /bin/sh only")
	}
	return out
}

// sampleEnv is a subnet.env as flanneld writes it.
const sampleEnv = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"

// hostRoutes is what the fake ip prints when a case sets no routes: routes
// that must not count as a conflict with 10.1.74.0/24.
const hostRoutes = `default via 192.168.1.1 dev eth0
10.1.0.0/16 via 10.1.0.0 dev flannel.1 onlink
10.1.75.0/24 via 10.1.75.0 dev flannel.1 onlink
10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1
192.168.1.0/24 dev eth0 proto kernel scope link src 192.168.1.10
`

type run struct {
	code   int
	stderr string
	out    string // the -d file after the run; "<absent>" if there is none
}

type runOpts struct {
	env    string   // subnet.env content; "" = sampleEnv
	noEnv  bool     // create no subnet.env at all
	routes string   // fake `ip -4 route show` output; "" = hostRoutes
	ipCmd  string   // MK_DOCKER_OPTS_IP; "" = the fake
	vars   []string // extra environment
	old    string   // pre-existing content of the -d file; "" = none
	dir    string   // subdirectory of the temp dir holding both files
}

// runScript runs the script under sh with -f and -d pointing into a fresh
// temp dir (after args, so a case can't write to /run by mistake), and a
// fake ip. The environment is built from scratch so a DOCKER_OPTS in the
// test's own environment cannot leak in.
func runScript(t *testing.T, sh string, o runOpts, args ...string) run {
	t.Helper()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, o.dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "subnet.env")
	if !o.noEnv {
		env := o.env
		if env == "" {
			env = sampleEnv
		}
		writeFile(t, envFile, env, 0o644)
	}
	dest := filepath.Join(dir, "docker_opts.env")
	if o.old != "" {
		writeFile(t, dest, o.old, 0o644)
	}
	routes := o.routes
	if routes == "" {
		routes = hostRoutes
	}
	writeFile(t, filepath.Join(tmp, "routes"), routes, 0o644)
	fakeIP := filepath.Join(tmp, "fake-ip")
	writeFile(t, fakeIP, "#!/bin/sh\nexec cat '"+filepath.Join(tmp, "routes")+"'\n", 0o755)
	ipCmd := o.ipCmd
	if ipCmd == "" {
		ipCmd = fakeIP
	}

	cmd := exec.Command(sh, append([]string{script}, append(args, "-f", envFile, "-d", dest)...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "MK_DOCKER_OPTS_IP=" + ipCmd}, o.vars...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	r := run{stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running %s %s: %v", sh, script, err)
	}
	b, err := os.ReadFile(dest)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.out = "<absent>"
	case err != nil:
		t.Fatal(err)
	default:
		r.out = string(b)
	}
	return r
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func TestMkDockerOptsOutput(t *testing.T) {
	const (
		bip   = `DOCKER_OPT_BIP="--bip=10.1.74.1/24"` + "\n"
		masqT = `DOCKER_OPT_IPMASQ="--ip-masq=true"` + "\n"
		mtu   = `DOCKER_OPT_MTU="--mtu=1472"` + "\n"
	)
	tests := []struct {
		name string
		o    runOpts
		args []string
		want string
	}{
		{
			name: "default writes individual and combined",
			want: bip + masqT + mtu + `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-i",
			args: []string{"-i"},
			want: bip + masqT + mtu,
		},
		{
			name: "-c",
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-i -c is the default",
			args: []string{"-i", "-c"},
			want: bip + masqT + mtu + `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "the tutorial",
			o:    runOpts{env: "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.72.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"},
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.0.72.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-k unset key",
			args: []string{"-k", "CUSTOM_KEY"},
			want: bip + masqT + mtu + `CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-k key set in the environment is prepended",
			o:    runOpts{vars: []string{"DOCKER_NETWORK_OPTIONS=--debug --log-level=warn"}},
			args: []string{"-c", "-k", "DOCKER_NETWORK_OPTIONS"},
			want: `DOCKER_NETWORK_OPTIONS="--debug --log-level=warn --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-k key set but empty",
			o:    runOpts{vars: []string{"DOCKER_NETWORK_OPTIONS="}},
			args: []string{"-c", "-k", "DOCKER_NETWORK_OPTIONS"},
			want: `DOCKER_NETWORK_OPTIONS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "default key DOCKER_OPTS set in the environment is prepended",
			o:    runOpts{vars: []string{"DOCKER_OPTS=--iptables=false"}},
			args: []string{"-c"},
			want: `DOCKER_OPTS="--iptables=false --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "other keys in the environment are ignored",
			o:    runOpts{vars: []string{"DOCKER_OPTS=--iptables=false"}},
			args: []string{"-c", "-k", "OTHER"},
			want: `OTHER=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "-m",
			args: []string{"-m"},
			want: bip + mtu + `DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"` + "\n",
		},
		{
			name: "-m ignores a bad FLANNEL_IPMASQ",
			o:    runOpts{env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n"},
			args: []string{"-c", "-m"},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"` + "\n",
		},
		{
			name: "FLANNEL_IPMASQ=true: docker must not masquerade",
			o:    runOpts{env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"},
			want: bip + `DOCKER_OPT_IPMASQ="--ip-masq=false"` + "\n" + mtu +
				`DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472"` + "\n",
		},
		{
			name: "-f and -d paths with spaces; the old output is replaced",
			o:    runOpts{dir: "a dir/with spaces", old: "DOCKER_OPTS=\"stale\"\nSTALE=1\nSTALE=2\nSTALE=3\n"},
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "quoted values, CRLF, comments, export and no final newline",
			o:    runOpts{env: "# written by hand\r\nexport FLANNEL_SUBNET=\"10.1.74.1/24\"\r\n\r\nFLANNEL_MTU='1472'\r\nFLANNEL_IPMASQ=false"},
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
		{
			name: "a /32 subnet routed elsewhere only as a wider prefix",
			o: runOpts{
				env:    "FLANNEL_SUBNET=10.1.74.9/32\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
				routes: "10.1.74.0/24 via 192.168.1.7 dev eth0\n10.1.74.90 via 192.168.1.7 dev eth0\n",
			},
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.1.74.9/32 --ip-masq=true --mtu=1450"` + "\n",
		},
		{
			name: "no ip command: the check is skipped",
			o:    runOpts{ipCmd: "/nonexistent/ip"},
			args: []string{"-c"},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"` + "\n",
		},
	}
	for _, sh := range shells(t) {
		for _, tc := range tests {
			t.Run(filepath.Base(sh)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				r := runScript(t, sh, tc.o, tc.args...)
				if r.code != 0 {
					t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
				}
				if r.out != tc.want {
					t.Errorf("output:\n%q\nwant:\n%q", r.out, tc.want)
				}
				if tc.o.ipCmd != "" {
					if !strings.Contains(r.stderr, "skipping the route-conflict check") {
						t.Errorf("stderr does not warn that the route check was skipped:\n%s", r.stderr)
					}
				} else if r.stderr != "" {
					t.Errorf("unexpected stderr:\n%s", r.stderr)
				}
			})
		}
	}
}

// TestMkDockerOptsReadsBack checks that a prepended value with shell
// metacharacters survives the round trip through the output file: sourcing
// it gives back the environment value followed by the options.
func TestMkDockerOptsReadsBack(t *testing.T) {
	const prev = "--label=\"a b\" --label=$HOME --label=`id` --label=\\x\nmore"
	for _, sh := range shells(t) {
		t.Run(filepath.Base(sh), func(t *testing.T) {
			r := runScript(t, sh, runOpts{vars: []string{"EXTRA=" + prev}}, "-c", "-k", "EXTRA")
			if r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			out := filepath.Join(t.TempDir(), "out.env")
			writeFile(t, out, r.out, 0o644)
			cmd := exec.Command(sh, "-c", `. "$1" && printf '%s' "$EXTRA"`, "sh", out)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/should-not-expand"}
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("sourcing %q: %v", r.out, err)
			}
			want := strings.ReplaceAll(prev, "\n", " ") + " --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
			if string(got) != want {
				t.Errorf("sourced EXTRA = %q, want %q (file: %q)", got, want, r.out)
			}
		})
	}
}

func TestMkDockerOptsErrors(t *testing.T) {
	const old = "DOCKER_OPTS=\"previous\"\n"
	tests := []struct {
		name    string
		o       runOpts
		args    []string
		wantErr []string // substrings of stderr
	}{
		{
			name:    "bad FLANNEL_IPMASQ",
			o:       runOpts{env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n"},
			wantErr: []string{"FLANNEL_IPMASQ must be true or false", `"yes"`},
		},
		{
			name:    "missing FLANNEL_IPMASQ",
			o:       runOpts{env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n"},
			wantErr: []string{"FLANNEL_IPMASQ must be true or false"},
		},
		{
			name:    "missing env file",
			o:       runOpts{noEnv: true},
			wantErr: []string{"cannot read flannel env file", "subnet.env"},
		},
		{
			name:    "IPv6-only env file",
			o:       runOpts{env: "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:4a::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"},
			wantErr: []string{"no FLANNEL_SUBNET"},
		},
		{
			name:    "bad FLANNEL_SUBNET",
			o:       runOpts{env: "FLANNEL_SUBNET=10.1.274.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"},
			wantErr: []string{`FLANNEL_SUBNET="10.1.274.1/24"`},
		},
		{
			name:    "FLANNEL_SUBNET without a length",
			o:       runOpts{env: "FLANNEL_SUBNET=10.1.74.1\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"},
			wantErr: []string{`FLANNEL_SUBNET="10.1.74.1"`},
		},
		{
			name:    "missing FLANNEL_MTU",
			o:       runOpts{env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=false\n"},
			wantErr: []string{`FLANNEL_MTU=""`},
		},
		{
			name: "route conflict",
			o: runOpts{routes: "default via 192.168.1.1 dev eth0\n" +
				"10.1.74.0/24 via 192.168.1.7 dev eth0 proto static\n"},
			wantErr: []string{"Your routing table already contains the subnet 10.1.74.0/24", "via 192.168.1.7"},
		},
		{
			name: "route conflict through a multipath route",
			o: runOpts{routes: "10.1.74.0/24 proto static\n" +
				"\tnexthop via 192.168.1.7 dev eth0 weight 1\n" +
				"\tnexthop via 192.168.1.8 dev eth0 weight 1\n"},
			wantErr: []string{"Your routing table already contains the subnet 10.1.74.0/24"},
		},
		{
			name: "route conflict for a /32",
			o: runOpts{
				env:    "FLANNEL_SUBNET=10.1.74.9/32\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
				routes: "10.1.74.9 via 192.168.1.7 dev eth0\n",
			},
			wantErr: []string{"Your routing table already contains the subnet 10.1.74.9/32"},
		},
		{
			name:    "-h",
			args:    []string{"-h"},
			wantErr: []string{"Usage: mk-docker-opts.sh", "-k KEY"},
		},
		{
			name:    "-?",
			args:    []string{"-?"},
			wantErr: []string{"Usage: mk-docker-opts.sh"},
		},
		{
			name:    "unknown option",
			args:    []string{"-x"},
			wantErr: []string{"unknown option -x", "Usage: mk-docker-opts.sh"},
		},
		{
			name:    "-k with a name that is not a variable",
			args:    []string{"-k", "A;rm -rf /"},
			wantErr: []string{"not a valid variable name"},
		},
	}
	for _, sh := range shells(t) {
		for _, tc := range tests {
			t.Run(filepath.Base(sh)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				tc.o.old = old
				r := runScript(t, sh, tc.o, tc.args...)
				if r.code != 1 {
					t.Errorf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(r.stderr, s) {
						t.Errorf("stderr does not mention %q:\n%s", s, r.stderr)
					}
				}
				if r.out != old {
					t.Errorf("output file changed on error: %q", r.out)
				}
			})
		}
	}
}
