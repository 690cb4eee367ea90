// Package atomicfile replaces files so that readers, and the file system
// after a crash, see the old content or the new, never an empty or partial
// file.
package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces the file at path with data, with mode perm whatever the
// umask. It writes a temporary file in the same directory, fsyncs it and
// renames it over path, then syncs the directory. The directory must
// exist. The temporary name starts with a dot and ends in .tmp, so that
// programs that load every *.conf or *.json in the directory (the CNI
// runtimes) skip it, and a name that does not start with a dot never
// clashes with it.
func Write(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	// Without the fsync a crash after the rename can leave an empty file
	// under the new name (ext4 delayed allocation).
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	SyncDir(dir)
	return nil
}

// SyncDir makes the creations, renames and removals in dir durable. Not
// every file system can sync a directory, and the change itself is already
// made, so this is best effort.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
