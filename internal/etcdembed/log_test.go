package etcdembed

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

func TestZapToSlog(t *testing.T) {
	var buf bytes.Buffer
	closing := new(atomic.Bool)
	zl := zapLogger(slog.New(slog.NewTextHandler(&buf, nil)), closing).With(zap.String("member", "m1"))
	zl.Info("chatter")
	zl.Warn("more chatter")
	zl.Error("disk full", zap.Int("free", 0))
	got := buf.String()
	if strings.Contains(got, "chatter") {
		t.Errorf("info/warn forwarded: %s", got)
	}
	for _, want := range []string{"level=ERROR", `msg="etcd: disk full"`, "member=m1", "free=0"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q lacks %q", got, want)
		}
	}
	buf.Reset()
	closing.Store(true)
	zl.Error("listener closed")
	if buf.Len() != 0 {
		t.Errorf("logged while closing: %s", buf.String())
	}
	if zapLogger(nil, closing).Core().Enabled(zap.ErrorLevel) {
		t.Error("nil logger is not silent")
	}
}
