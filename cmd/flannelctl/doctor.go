package main

import (
	"context"
	"fmt"
	"time"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/status"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

func doctorCmd(ctx context.Context, args []string, e opsEnv) error {
	f := newFlags("doctor", e)
	c, output := f.register()
	var subnetFile string
	f.envString(&subnetFile, "subnet-file", subnetenv.DefaultPath, "the subnet.env flanneld writes")
	quiet := f.Bool("q", false, "print only warnings and failures")
	probeTimeout := f.Duration("probe-timeout", 1500*time.Millisecond, "how long to wait for each peer to answer")
	pos, err := f.parse(args, e.getenv)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("doctor: unexpected argument %q", pos[0])
	}
	if err := c.resolve(e.getenv, *output); err != nil {
		return err
	}

	in := doctor.Input{SubnetFile: subnetFile, ProbeTimeout: *probeTimeout}
	in.Env, in.EnvErr = subnetenv.Read(subnetFile)
	if c.kube.on {
		doctorKube(ctx, c, &in, e)
	} else if s, err := c.open(ctx, e); err != nil {
		in.EtcdErr = err
	} else {
		defer s.Close()
		if _, in.Config, in.EtcdErr = status.ReadConfig(ctx, s); in.EtcdErr == nil {
			in.Leases, _, in.EtcdErr = s.Leases(ctx)
		}
		// Only our own lease's expiry matters here.
		if in.EnvErr == nil {
			for i, l := range in.Leases {
				if l.Subnet == in.Env.Subnet.Masked() && !l.Reserved() {
					if full, err := s.Lookup(ctx, l.Key()); err == nil {
						in.Leases[i].Expires = full.Expires
					}
				}
			}
		}
	}

	findings := doctor.Run(ctx, doctor.NewSystem(), in)
	if *output == "json" {
		if err := writeJSON(e.stdout, findings); err != nil {
			return err
		}
	} else {
		for _, fd := range findings {
			if *quiet && (fd.Level == doctor.OK || fd.Level == doctor.Skip) {
				continue
			}
			fmt.Fprintln(e.stdout, fd)
		}
	}
	if n := countLevel(findings, doctor.Fail); n > 0 {
		return fmt.Errorf("doctor: %d %s failed", n, plural(n, "check", "checks"))
	}
	return nil
}

func countLevel(fs []doctor.Finding, l doctor.Level) int {
	n := 0
	for _, f := range fs {
		if f.Level == l {
			n++
		}
	}
	return n
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
