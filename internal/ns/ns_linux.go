// Package ns creates, enters and deletes named network namespaces (the ones
// `ip netns` lists, bind-mounted under /run/netns). The lab and the tests
// use it to build hosts; nothing in it touches the root namespace's
// addresses or routes.
package ns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a named network namespace.
type NS struct {
	Name string
}

// Unique returns prefix followed by random hex, short enough that
// prefix+suffix stays a valid interface name (≤ 15 bytes) for prefixes of
// up to 9 bytes.
func Unique(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Create makes a new named namespace with its loopback up. Equivalent to:
// `ip netns add NAME; ip -n NAME link set lo up`.
func Create(name string) (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("netns %s: current namespace: %w", name, err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return nil, fmt.Errorf("netns %s: create: %w", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		return nil, fmt.Errorf("netns %s: return to original namespace: %w", name, err)
	}
	n := &NS{Name: name}
	if err := n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		_ = n.Delete()
		return nil, fmt.Errorf("netns %s: loopback up: %w", name, err)
	}
	return n, nil
}

// Open returns the existing namespace NAME, or an error if it is absent.
func Open(name string) (*NS, error) {
	if _, err := os.Stat("/run/netns/" + name); err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	return &NS{Name: name}, nil
}

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// Delete removes the namespace; deleting an absent one is not an error.
// Links inside it go with it once no process holds it. Equivalent to:
// `ip netns del NAME`.
func (n *NS) Delete() error {
	err := netns.DeleteNamed(n.Name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns %s: delete: %w", n.Name, err)
	}
	return nil
}

// Handle returns a netlink handle bound to the namespace.
func (n *NS) Handle() (*netlink.Handle, error) {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netns %s: netlink handle: %w", n.Name, err)
	}
	return nh, nil
}

// Do runs fn on a locked OS thread switched into the namespace. fn must not
// start goroutines that expect to stay in the namespace.
func (n *NS) Do(fn func() error) error {
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", n.Name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine whose thread is thrown away if it cannot be
	// switched back, so no other goroutine ever runs in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime will discard it.
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace. Equivalent to:
// `ip netns exec NAME ARGS...`.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output,
// with the output in the error when it fails.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %v: %w: %s", n.Name, name, args, err, out)
	}
	return string(out), nil
}
