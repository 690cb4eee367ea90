package cni

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"

	"github.com/flannel-go/flannel/internal/atomicfile"
)

// InstallOptions says what Install copies where. An empty source skips
// that file.
type InstallOptions struct {
	Plugin       string // the plugin binary to install, e.g. /flannel in the image
	BinDir       string // where runtimes look for plugins, e.g. /opt/cni/bin
	PluginName   string // the name there; "flannel" if empty
	Conflist     string // the network configuration list, e.g. from a ConfigMap
	ConfDir      string // where runtimes look for it, e.g. /etc/cni/net.d
	ConflistName string // the name there; "10-flannel.conflist" if empty
}

// Install puts the plugin binary and the conflist in place for the
// runtime, as a DaemonSet's init container does on every node. The image
// it runs from has no shell or cp, so this is the copy step.
//
// Each file is replaced atomically (a temporary file in the target
// directory, synced, then renamed over the old one): a runtime that execs
// the plugin or reads the configuration at that moment sees the old file
// or the new one, never a partial one, and a running plugin keeps its old
// binary. A file whose content is already right is left alone, so
// runtimes that watch the configuration directory do not reload for
// nothing. The conflist is validated first: a broken ConfigMap must not
// replace a working configuration.
func Install(log *slog.Logger, o InstallOptions) error {
	if o.PluginName == "" {
		o.PluginName = "flannel"
	}
	if o.ConflistName == "" {
		o.ConflistName = "10-flannel.conflist"
	}
	if o.Conflist != "" {
		b, err := os.ReadFile(o.Conflist)
		if err != nil {
			return fmt.Errorf("install: read conflist: %w", err)
		}
		if _, err := libcni.ConfListFromBytes(b); err != nil {
			return fmt.Errorf("install: %s is not a valid CNI network configuration list: %w", o.Conflist, err)
		}
	}
	if o.Plugin != "" {
		if err := installFile(log, o.Plugin, o.BinDir, o.PluginName, 0o755); err != nil {
			return err
		}
	}
	if o.Conflist != "" {
		if err := installFile(log, o.Conflist, o.ConfDir, o.ConflistName, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func installFile(log *slog.Logger, src, dir, name string, mode fs.FileMode) error {
	dst := filepath.Join(dir, name)
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if same(dst, b, mode) {
		log.Info("already installed", "file", dst)
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := atomicfile.Write(dst, b, mode); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	log.Info("installed", "file", dst, "from", src)
	return nil
}

// same reports whether path already holds b with mode.
func same(path string, b []byte, mode fs.FileMode) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != mode || st.Size() != int64(len(b)) {
		return false
	}
	have, err := io.ReadAll(f)
	return err == nil && bytes.Equal(have, b)
}
