package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/status"
)

// cli runs one ops command in-process with env as its environment.
type cli struct {
	t   *testing.T
	env map[string]string
}

func (c cli) run(stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = ops(ctx, args[0], args[1:], opsEnv{
		getenv: func(k string) string { return c.env[k] },
		stdin:  strings.NewReader(stdin),
		stdout: &out, stderr: &errb,
	})
	return out.String(), errb.String(), err
}

// ok runs a command that must succeed and returns its output.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("flannelctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs a command that must fail and returns its error text.
func (c cli) fails(args ...string) string {
	c.t.Helper()
	out, _, err := c.run("", args...)
	if err == nil {
		c.t.Fatalf("flannelctl %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	return err.Error()
}

func TestFlagsFollowFlanneld(t *testing.T) {
	parse := func(env map[string]string, global []string, args ...string) (etcdconf.Options, []string, error) {
		getenv := func(k string) string { return env[k] }
		f := newFlags("test", opsEnv{stderr: &bytes.Buffer{}, global: global})
		c, output := f.register()
		pos, err := f.parse(args, getenv)
		if err != nil {
			return etcdconf.Options{}, nil, err
		}
		err = c.resolve(getenv, *output)
		return c.opts, pos, err
	}
	o, _, err := parse(nil, nil)
	if err != nil || o.Prefix != "/coreos.com/network" || strings.Join(o.Endpoints, ",") != "http://127.0.0.1:4001,http://127.0.0.1:2379" || o.API != "auto" {
		t.Errorf("defaults: %+v %v", o, err)
	}
	env := map[string]string{"FLANNELD_ETCD_PREFIX": "/env", "FLANNELD_ETCD_ENDPOINTS": "http://e:2379", "FLANNELD_ETCD_USERNAME": ""}
	o, _, _ = parse(env, nil)
	if o.Prefix != "/env" || strings.Join(o.Endpoints, ",") != "http://e:2379" || o.Username != "" {
		t.Errorf("env: %+v", o)
	}
	o, pos, err := parse(env, nil, "show", "10.5.1.0/24", "--etcd-prefix=/flag", "--", "-x")
	if err != nil || o.Prefix != "/flag" || strings.Join(o.Endpoints, ",") != "http://e:2379" || strings.Join(pos, " ") != "show 10.5.1.0/24 -x" {
		t.Errorf("flag after positional args: %+v %q %v", o, pos, err)
	}
	o, pos, err = parse(env, []string{"--etcd-prefix=/global", "--timeout", "2s"}, "show", "10.5.1.0/24")
	if err != nil || o.Prefix != "/global" || o.Timeout != 2*time.Second || strings.Join(pos, " ") != "show 10.5.1.0/24" {
		t.Errorf("global flags: %+v %q %v", o, pos, err)
	}

	f := newFlags("test", opsEnv{stderr: &bytes.Buffer{}})
	var port int
	f.envInt(&port, "healthz-port", 0, "")
	if _, err := f.parse(nil, func(string) string { return "many" }); err == nil || !strings.Contains(err.Error(), "FLANNELD_HEALTHZ_PORT") {
		t.Errorf("bad env value: err = %v", err)
	}
}

// etcdCLI starts an etcd and returns a cli pointed at it through the
// environment, as an operator's shell with FLANNELD_* exported would be,
// and a store on the same prefix.
func etcdCLI(t *testing.T) (cli, *etcdstore.Store) {
	eps := etcdtest.StartEtcd(t)
	prefix := "/test/" + strings.ReplaceAll(t.Name(), "/", "_")
	s, err := etcdstore.New(etcdstore.Options{Endpoints: eps, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return cli{t: t, env: map[string]string{"FLANNELD_ETCD_ENDPOINTS": strings.Join(eps, ","), "FLANNELD_ETCD_PREFIX": prefix}}, s
}

func TestConfig(t *testing.T) {
	c, _ := etcdCLI(t)
	if err := c.fails("config", "get"); !strings.Contains(err, "no network config") {
		t.Errorf("get without config: %s", err)
	}
	invalid := `{"Network":"10.5.0.0/16","SubnetLen":31}`
	_, parseErr := netconf.Parse([]byte(invalid))
	if parseErr == nil {
		t.Fatal("test config is valid")
	}
	for _, args := range [][]string{{"config", "set", invalid}, {"config", "validate", invalid}} {
		if err := c.fails(args...); !strings.Contains(err, parseErr.Error()) {
			t.Errorf("%s: error %q lacks the parser's %q", args[1], err, parseErr)
		}
	}
	if err := c.fails("config", "get"); !strings.Contains(err, "no network config") {
		t.Errorf("an invalid config was written: %s", err)
	}

	good := `{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.19.0","Backend":{"Type":"vxlan"}}`
	out, _, err := c.run(good, "config", "set", "-")
	if err != nil || !strings.Contains(out, "10 subnets") || !strings.Contains(out, "backend vxlan") {
		t.Fatalf("set from stdin: %v: %s", err, out)
	}
	if got := c.ok("config", "get"); got != good+"\n" {
		t.Errorf("get = %q, want %q", got, good)
	}
	if got := c.ok("config", "validate"); !strings.Contains(got, "is valid") {
		t.Errorf("validate the stored config: %q", got)
	}

	file := filepath.Join(t.TempDir(), "net.json")
	second := `{"Network":"10.6.0.0/16","Backend":{"Type":"host-gw"}}`
	if err := os.WriteFile(file, []byte(second), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := c.ok("config", "validate", "@"+file); !strings.Contains(got, "Network 10.6.0.0/16") {
		t.Errorf("validate @file: %q", got)
	}
	c.ok("config", "set", "@"+file)
	if got := c.ok("config", "get"); got != second+"\n" {
		t.Errorf("after set @file: get = %q", got)
	}
	c.fails("config", "set", `{"Network":`)
	if got := c.ok("config", "get"); got != second+"\n" {
		t.Errorf("a refused set changed the config: %q", got)
	}
}

func vxlanAttrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)}
}

func TestLeases(t *testing.T) {
	c, s := etcdCLI(t)
	ctx := context.Background()
	// Four subnets: 10.5.1.0 .. 10.5.4.0.
	c.ok("config", "set", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","Backend":{"Type":"vxlan"}}`)
	cfg, _ := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","Backend":{"Type":"vxlan"}}`))
	h1, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: vxlanAttrs("192.168.1.11")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: vxlanAttrs("192.168.1.12")}, time.Hour); err != nil {
		t.Fatal(err)
	}

	// A hand-written bad entry is named on stderr and left out.
	if _, err := s.Client().Put(ctx, lease.KeyPath(s.Prefix(), "10.5.3.7-24"), `{"PublicIP":"192.168.1.13"}`); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := c.run("", "leases", "list")
	if err != nil || !strings.Contains(errOut, "skipping bad subnet entry") || !strings.Contains(errOut, "10.5.3.7-24") || strings.Contains(errOut, "plain http") {
		t.Errorf("bad entry: err %v, stderr %q", err, errOut)
	}
	if _, err := s.Client().Delete(ctx, lease.KeyPath(s.Prefix(), "10.5.3.7-24")); err != nil {
		t.Fatal(err)
	}

	table := c.ok("leases", "list")
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if len(rows) != 3 || strings.Join(strings.Fields(rows[0]), " ") != "SUBNET PUBLIC IP BACKEND EXPIRES RESERVED" {
		t.Fatalf("table:\n%s", table)
	}
	for i, want := range [][]string{{"10.5.1.0/24", "192.168.1.11", "vxlan"}, {"10.5.2.0/24", "192.168.1.12", "vxlan"}} {
		f := strings.Fields(rows[i+1])
		if len(f) != 5 || f[0] != want[0] || f[1] != want[1] || f[2] != want[2] || !strings.HasPrefix(f[3], "59m") && f[3] != "1h00m" || f[4] != "no" {
			t.Errorf("row %d = %q, want %v, EXPIRES about 1h, not reserved", i, rows[i+1], want)
		}
	}
	var list []status.LeaseInfo
	if err := json.Unmarshal([]byte(c.ok("leases", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Subnet != "10.5.1.0/24" || list[0].PublicIP != "192.168.1.11" || list[0].Reserved ||
		list[0].Expires == nil || time.Until(*list[0].Expires) < 58*time.Minute || !strings.Contains(string(list[0].BackendData), "VtepMAC") ||
		!strings.HasSuffix(list[0].Key, "/subnets/10.5.1.0-24") {
		t.Errorf("json: %+v", list)
	}

	byCIDR := c.ok("leases", "show", "10.5.1.0/24")
	if byKey := c.ok("leases", "show", "10.5.1.0-24"); byKey != byCIDR || !strings.Contains(byCIDR, "192.168.1.11") || !strings.Contains(byCIDR, "VtepMAC") {
		t.Errorf("show by CIDR:\n%s\nby key:\n%s", byCIDR, byKey)
	}
	if err := c.fails("leases", "show", "10.5.3.0/24"); !strings.Contains(err, "no lease or reservation for 10.5.3.0/24") {
		t.Errorf("show a free subnet: %s", err)
	}

	// Refused reservations write nothing.
	for _, tt := range []struct{ subnet, ip, want string }{
		{"10.5.9.0/24", "192.168.1.20", "does not fit"},           // beyond SubnetMax
		{"10.5.3.0/25", "192.168.1.20", "does not fit"},           // wrong length
		{"10.5.2.0/24", "192.168.1.20", "leased by 192.168.1.12"}, // another host's lease
		{"10.5.3.0/24", "10.5.7.7", "inside the overlay network"}, // not an underlay address
		{"10.5.3.0/24", "fc00::1", "not an IPv4 address"},         // wrong family
	} {
		if err := c.fails("leases", "reserve", tt.subnet, tt.ip); !strings.Contains(err, tt.want) {
			t.Errorf("reserve %s %s: %s, want %q", tt.subnet, tt.ip, err, tt.want)
		}
	}
	if n := len(mustLeases(t, s)); n != 2 {
		t.Fatalf("refused reservations left %d keys, want 2", n)
	}

	out := c.ok("leases", "reserve", "10.5.3.0-24", "192.168.1.20")
	if !strings.Contains(out, "reserved 10.5.3.0/24 for 192.168.1.20") {
		t.Errorf("reserve: %q", out)
	}
	kv := mustGet(t, s, "10.5.3.0-24")
	if kv.Lease != 0 || string(kv.Value) != `{"PublicIP":"192.168.1.20","PublicIPv6":null}` {
		t.Errorf("reservation stored as %s with etcd lease %x; want upstream's value and no lease", kv.Value, kv.Lease)
	}
	if out := c.ok("leases", "reserve", "10.5.3.0/24", "192.168.1.20"); !strings.Contains(out, "already reserved") {
		t.Errorf("reserving twice: %q", out)
	}
	if err := c.fails("leases", "reserve", "10.5.3.0/24", "192.168.1.21"); !strings.Contains(err, "reserved for 192.168.1.20") {
		t.Errorf("reserving another host's reservation: %s", err)
	}
	row := rowOf(t, c.ok("leases", "list"), "10.5.3.0/24")
	if row[3] != "never" || row[4] != "yes" {
		t.Errorf("reservation row %q", row)
	}

	// flanneld's allocation honours it: a new host gets the last free
	// subnet, the host it names gets it.
	got, err := lease.Acquire(ctx, s, cfg, vxlanAttrs("192.168.1.30"), lease.Prev{}, time.Hour, nil)
	if err != nil || got.Subnet != netip.MustParsePrefix("10.5.4.0/24") {
		t.Errorf("new host acquired %v (%v), want the one free subnet 10.5.4.0/24", got.Subnet, err)
	}
	got, err = lease.Acquire(ctx, s, cfg, vxlanAttrs("192.168.1.20"), lease.Prev{}, time.Hour, nil)
	if err != nil || got.Subnet != netip.MustParsePrefix("10.5.3.0/24") || !got.Reserved() {
		t.Errorf("reserved host acquired %v reserved=%v (%v), want its reservation", got.Subnet, got.Reserved(), err)
	}

	// A host's own lease becomes its reservation, value kept.
	out = c.ok("leases", "reserve", "10.5.1.0/24", "192.168.1.11")
	if !strings.Contains(out, "now its reservation") {
		t.Errorf("converting a lease: %q", out)
	}
	kv = mustGet(t, s, "10.5.1.0-24")
	if kv.Lease != 0 || !strings.Contains(string(kv.Value), "VtepMAC") {
		t.Errorf("converted lease stored as %s with etcd lease %x", kv.Value, kv.Lease)
	}
	if ttl, err := s.Client().TimeToLive(ctx, clientv3.LeaseID(h1.ID)); err != nil || ttl.TTL != -1 {
		t.Errorf("the converted lease's etcd lease still lives: %+v %v", ttl, err)
	}

	// Release: a reservation is just its key; a lease also ends its etcd lease.
	if out := c.ok("leases", "release", "10.5.3.0/24"); !strings.Contains(out, "released the reservation of 10.5.3.0/24") {
		t.Errorf("release reservation: %q", out)
	}
	l4, err := s.Lookup(ctx, "10.5.4.0-24")
	if err != nil {
		t.Fatal(err)
	}
	c.ok("leases", "release", "10.5.4.0-24")
	if ttl, err := s.Client().TimeToLive(ctx, clientv3.LeaseID(l4.ID)); err != nil || ttl.TTL != -1 {
		t.Errorf("released lease's etcd lease still lives: %+v %v", ttl, err)
	}
	var subnets []string
	for _, l := range mustLeases(t, s) {
		subnets = append(subnets, l.Subnet.String())
	}
	if strings.Join(subnets, " ") != "10.5.1.0/24 10.5.2.0/24" {
		t.Errorf("after releases: %v", subnets)
	}
	if err := c.fails("leases", "release", "10.5.3.0/24"); !strings.Contains(err, "no lease or reservation") {
		t.Errorf("releasing twice: %s", err)
	}
}

func mustLeases(t *testing.T, s lease.AdminStore) []lease.Lease {
	t.Helper()
	ls, err := lease.List(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func mustGet(t *testing.T, s *etcdstore.Store, key string) *mvccKV {
	t.Helper()
	r, err := s.Client().Get(context.Background(), lease.KeyPath(s.Prefix(), key))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get %s: %v (%d keys)", key, err, len(r.Kvs))
	}
	return &mvccKV{Value: r.Kvs[0].Value, Lease: r.Kvs[0].Lease}
}

type mvccKV struct {
	Value []byte
	Lease int64
}

func rowOf(t *testing.T, table, subnet string) []string {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == subnet {
			return f
		}
	}
	t.Fatalf("no row for %s in:\n%s", subnet, table)
	return nil
}
