package cni_test

import (
	"fmt"

	"github.com/flannel-go/flannel/internal/cni"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// The delegate configuration for the conflist entry of upstream's
// manifest on a host whose flanneld masquerades.
func ExampleBuildDelegate() {
	conf, err := cni.ParseConf([]byte(`{"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
		"delegate": {"hairpinMode": true, "isDefaultGateway": true}}`))
	if err != nil {
		panic(err)
	}
	env, err := subnetenv.ParseFull([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	if err != nil {
		panic(err)
	}
	d, err := cni.BuildDelegate(conf, env)
	if err != nil {
		panic(err)
	}
	fmt.Println(d.Type)
	fmt.Println(string(d.Conf))
	// Output:
	// bridge
	// {"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}
}
