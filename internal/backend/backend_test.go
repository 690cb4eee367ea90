package backend

import (
	"errors"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestCheckPeer(t *testing.T) {
	typed := Info{Type: "x", TypedLeases: true}
	untyped := Info{Type: "y"}
	picky := Info{Type: "x", TypedLeases: true, ValidatePeer: func(l lease.Lease) error {
		if len(l.Attrs.BackendData) == 0 {
			return errors.New("no BackendData")
		}
		return nil
	}}
	peer := func(typ, data string) lease.Lease {
		l := lease.Lease{Attrs: lease.Attrs{BackendType: typ}}
		if data != "" {
			l.Attrs.BackendData = []byte(data)
		}
		return l
	}
	for _, tc := range []struct {
		name string
		info Info
		l    lease.Lease
		want string // substring of the error; "" = accepted
	}{
		{"typed, same type", typed, peer("x", ""), ""},
		{"typed, other type", typed, peer("z", ""), `backend "z", this host runs "x"`},
		{"typed, untyped lease", typed, peer("", ""), `backend ""`},
		{"untyped takes anything", untyped, peer("z", ""), ""},
		{"validate passes", picky, peer("x", "{}"), ""},
		{"validate fails", picky, peer("x", ""), "no BackendData"},
		{"type before validate", picky, peer("z", ""), `backend "z"`},
	} {
		err := tc.info.CheckPeer(tc.l)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: CheckPeer = %v, want %q", tc.name, err, tc.want)
		}
	}
}
