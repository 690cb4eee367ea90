package leasetest

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
)

func TestFakeConforms(t *testing.T) {
	RunStoreTests(t, func(t *testing.T) lease.Store { return New(nil) })
}

func TestBadEntryWarnsWithKey(t *testing.T) {
	var buf logbuf.Buffer
	s := New(slog.New(slog.NewTextHandler(&buf, nil)))
	ctx := context.Background()
	if err := s.PutRaw(ctx, "10.5.11.0-24", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	ls, _, err := s.Leases(ctx)
	if err != nil || len(ls) != 0 {
		t.Fatalf("Leases = %v, %v", ls, err)
	}
	if got := buf.String(); strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "key=10.5.11.0-24") {
		t.Fatalf("want one warning naming the key, got:\n%s", got)
	}
}

// While down, requests fail and watches stall; after, the watch delivers
// what happened meanwhile (here: an expiry).
func TestDown(t *testing.T) {
	s := New(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := s.Create(ctx, sample(1, "192.168.1.1"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, rev, _ := s.Leases(ctx)
	w := StartWatch(t, s, rev)
	s.SetDown(true)
	if _, err := s.Renew(ctx, l, time.Minute); !errors.Is(err, ErrDown) {
		t.Fatalf("Renew while down: %v, want ErrDown", err)
	}
	s.Advance(2 * time.Minute)
	select {
	case e := <-w.Events():
		t.Fatalf("event %v while down", e)
	case <-time.After(50 * time.Millisecond):
	}
	s.SetDown(false)
	expectEvent(t, w.Next(t, 5*time.Second), lease.Removed, l)
}
