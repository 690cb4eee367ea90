package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/status"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

func statusCmd(ctx context.Context, args []string, e opsEnv) error {
	f := newFlags("status", e)
	c, output := f.register()
	var o status.Options
	f.envString(&o.SubnetFile, "subnet-file", subnetenv.DefaultPath, "the subnet.env flanneld writes")
	f.envString(&o.HealthzIP, "healthz-ip", "127.0.0.1", "address of flanneld's health endpoints (0.0.0.0 means this host)")
	f.envInt(&o.HealthzPort, "healthz-port", 0, "port of flanneld's health endpoints; 0 skips the check")
	pos, err := f.parse(args, e.getenv)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("status: unexpected argument %q", pos[0])
	}
	if err := c.resolve(e.getenv, *output); err != nil {
		return err
	}
	if o.HealthzPort < 0 || o.HealthzPort > 65535 {
		return usagef("--healthz-port=%d: not a port number", o.HealthzPort)
	}

	var st status.Status
	if c.kube.on {
		st = statusKube(ctx, c, o, e)
	} else if s, err := c.open(ctx, e); err != nil {
		st = status.Collect(ctx, o, nil, err, doctor.NewSystem())
	} else {
		defer s.Close()
		st = status.Collect(ctx, o, s, nil, doctor.NewSystem())
	}
	if *output == "json" {
		if err := writeJSON(e.stdout, st); err != nil {
			return err
		}
	} else if err := status.Print(e.stdout, st); err != nil {
		return err
	}
	if len(st.Problems) > 0 {
		return fmt.Errorf("status: flanneld on this host is not healthy: %s", strings.Join(st.Problems, "; "))
	}
	return nil
}
