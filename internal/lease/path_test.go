package lease

import "testing"

func TestPaths(t *testing.T) {
	for _, p := range []string{"/coreos.com/network", "/coreos.com/network/"} {
		if got := ConfigKey(p); got != "/coreos.com/network/config" {
			t.Errorf("ConfigKey(%q) = %q", p, got)
		}
		if got := SubnetsDir(p); got != "/coreos.com/network/subnets/" {
			t.Errorf("SubnetsDir(%q) = %q", p, got)
		}
		if got := KeyPath(p, "10.5.34.0-24"); got != "/coreos.com/network/subnets/10.5.34.0-24" {
			t.Errorf("KeyPath(%q) = %q", p, got)
		}
	}
}
