package main

import (
	"context"
	"errors"
	"io"
)

func labScale(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("lab scale: not implemented yet")
}
