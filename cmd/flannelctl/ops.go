package main

import (
	"context"
	"fmt"
	"io"
)

// opsCmd runs the commands that work against a cluster's etcd and the local
// flanneld (config, leases, status, doctor).
func opsCmd(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	return fmt.Errorf("%s: not implemented yet", name)
}
