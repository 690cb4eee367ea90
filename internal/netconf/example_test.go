package netconf_test

import (
	"fmt"

	"github.com/flannel-go/flannel/internal/netconf"
)

func ExampleParse() {
	c, err := netconf.Parse([]byte(`{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.BackendType, c.SubnetLen, c.SubnetMin, c.SubnetMax)

	_, err = netconf.Parse([]byte(`{"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}`))
	fmt.Println(err)
	// Output:
	// vxlan 24 10.5.1.0 10.5.255.0
	// config: SubnetMin "10.6.0.0" is not inside Network 10.5.0.0/16 (SubnetMin is not in the range of the Network)
}
