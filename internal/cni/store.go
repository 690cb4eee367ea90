package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/utils"

	"github.com/flannel-go/flannel/internal/atomicfile"
)

// The store keeps, for each container, the delegate configuration ADD used,
// in DataDir/<containerID>: DEL and CHECK must use that one, not one built
// from today's subnet.env, or a changed subnet would leak the container's
// address and veth.

// statePath returns where the state of containerID lives. The ID becomes a
// file name, so it must be one: the runtime's IDs are, and skel checks, but
// the store does not rely on its caller for that.
func statePath(dataDir, containerID string) (string, error) {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return "", fmt.Errorf("flannel: container ID %q: %s", containerID, err.Msg)
	}
	return filepath.Join(dataDir, containerID), nil
}

// SaveState stores conf as containerID's delegate configuration, replacing
// any earlier one atomically and durably: after a crash the file is the old
// one or the new one, never empty or partial. The directory is created 0700
// and the file is 0600, as upstream's are (the configuration may hold
// runtime secrets).
func SaveState(dataDir, containerID string, conf []byte) error {
	path, err := statePath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("flannel: create data directory: %w", err)
	}
	// Container IDs never start with '.', so atomicfile's temporary name
	// cannot be another container's state.
	if err := atomicfile.Write(path, conf, 0o600); err != nil {
		return fmt.Errorf("flannel: save state to %s: %w", path, err)
	}
	return nil
}

// LoadState returns containerID's saved delegate configuration. If there is
// none the error matches fs.ErrNotExist.
func LoadState(dataDir, containerID string) ([]byte, error) {
	path, err := statePath(dataDir, containerID)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("flannel: load state: %w", err)
	}
	return b, nil
}

// RemoveState deletes containerID's saved configuration; deleting an
// absent one is not an error.
func RemoveState(dataDir, containerID string) error {
	path, err := statePath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("flannel: remove state: %w", err)
	}
	atomicfile.SyncDir(dataDir)
	return nil
}
