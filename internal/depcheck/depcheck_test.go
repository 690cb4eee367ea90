package depcheck_test

import (
	"fmt"
	"testing"

	"github.com/flannel-go/flannel/internal/depcheck"
)

// recorder keeps the failures instead of failing the test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestNotLinked(t *testing.T) {
	r := &recorder{TB: t}
	depcheck.NotLinked(r, "depcheck", "/no/such/package", "os/exec")
	if len(r.errs) != 1 || r.errs[0] != "depcheck links os/exec" {
		t.Errorf("failures %q, want one naming os/exec", r.errs)
	}
}
