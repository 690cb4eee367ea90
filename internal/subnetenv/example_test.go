package subnetenv_test

import (
	"fmt"
	"net/netip"

	"github.com/flannel-go/flannel/internal/subnetenv"
)

func ExampleFormat() {
	lease := netip.MustParsePrefix("10.5.72.0/24")
	fmt.Printf("%s", subnetenv.Format(subnetenv.Env{
		Network: netip.MustParsePrefix("10.5.0.0/16"),
		Subnet:  subnetenv.SubnetAddr(lease),
		MTU:     1450,
		IPMasq:  true,
	}))
	// Output:
	// FLANNEL_NETWORK=10.5.0.0/16
	// FLANNEL_SUBNET=10.5.72.1/24
	// FLANNEL_MTU=1450
	// FLANNEL_IPMASQ=true
}
