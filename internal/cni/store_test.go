package cni_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/flannel-go/flannel/internal/cni"
)

func TestState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if _, err := cni.LoadState(dir, "c1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadState before any save: %v, want fs.ErrNotExist", err)
	}
	for _, s := range []string{`{"v":1}`, `{"v":2}`} {
		if err := cni.SaveState(dir, "c1", []byte(s)); err != nil {
			t.Fatal(err)
		}
		if b, err := cni.LoadState(dir, "c1"); err != nil || string(b) != s {
			t.Fatalf("LoadState = %s, %v; want %s", b, err, s)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dataDir holds %v, want only c1 (no temporary files)", entries)
	}
	if err := cni.RemoveState(dir, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := cni.RemoveState(dir, "c1"); err != nil {
		t.Errorf("removing twice: %v", err)
	}
}

func TestStateRejectsBadIDs(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"", "../x", "a/b", ".hidden", "-x"} {
		if err := cni.SaveState(dir, id, []byte("{}")); err == nil {
			t.Errorf("SaveState(%q) succeeded", id)
		}
		if _, err := cni.LoadState(dir, id); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("LoadState(%q) = %v, want a refusal", id, err)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x")); err == nil {
		t.Errorf("a file escaped dataDir")
	}
}
