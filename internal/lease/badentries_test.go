package lease

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestBadEntriesWarnOncePerValue(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var b BadEntries
	for range 3 {
		b.Warn(log, "skipping bad subnet entry", "/p/subnets/junk", []byte("x"), "bad key")
	}
	b.Warn(log, "skipping bad subnet entry", "/p/subnets/junk", []byte("y"), "bad key")
	b.Warn(log, "skipping bad subnet entry", "/p/subnets/other", []byte("x"), "bad key")
	if n := strings.Count(buf.String(), "level=WARN"); n != 3 {
		t.Errorf("%d warnings, want 3 (once, again on a new value, once for another key):\n%s", n, buf.String())
	}
}
