package ethtool

import (
	"context"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// TestFeature reads GRO on a veth as ethtool switches it, and names an
// unknown feature or device in its error.
func TestFeature(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	n := netnstest.New(t, "fet")
	netnstest.Run(t, "ip", "-n", n.Name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	for _, setting := range []string{"on", "off", "on"} {
		if _, err := n.Run(context.Background(), "ethtool", "-K", "v0", "gro", setting); err != nil {
			t.Fatal(err)
		}
		var on bool
		if err := n.Do(func() error {
			var err error
			on, err = Feature("v0", "rx-gro")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if on != (setting == "on") {
			t.Errorf("after ethtool -K v0 gro %s: Feature reads %v", setting, on)
		}
	}
	for _, c := range []struct{ dev, feature, want string }{
		{"v0", "no-such-feature", "no-such-feature"},
		{"nosuchdev", "rx-gro", "nosuchdev"},
	} {
		err := n.Do(func() error { _, err := Feature(c.dev, c.feature); return err })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Feature(%q, %q): err = %v, want one naming %q", c.dev, c.feature, err, c.want)
		}
	}
}
