package atomicfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/flannel-go/flannel/internal/atomicfile"
)

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	for _, c := range []struct {
		data string
		perm fs.FileMode
	}{{"first\n", 0o644}, {"second, longer\n", 0o600}} {
		if err := atomicfile.Write(path, []byte(c.data), c.perm); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != c.data {
			t.Fatalf("read back %q, %v; want %q", b, err, c.data)
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != c.perm {
			t.Fatalf("mode %v, %v; want %v (the temporary file is made 0600)", st.Mode().Perm(), err, c.perm)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("directory holds %v, %v; want only the file, no temporary left", ents, err)
	}
}

func TestWriteFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	if err := atomicfile.Write(filepath.Join(dir, "absent", "f"), []byte("x"), 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing directory: got %v, want fs.ErrNotExist", err)
	}
	// Renaming a file over a directory fails after the temporary file
	// was written: it must not be left behind.
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(filepath.Join(dir, "d"), []byte("x"), 0o644); err == nil {
		t.Fatal("replacing a directory succeeded")
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Errorf("directory holds %v, %v; want only d", ents, err)
	}
}
