package doctor_test

import (
	"fmt"
	"net/netip"

	"github.com/flannel-go/flannel/internal/doctor"
)

// A host where Docker set the FORWARD policy to DROP and flanneld runs
// with --iptables-forward-rules=false.
func ExampleEvalForward() {
	save := []byte(`*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
COMMIT
`)
	v := doctor.EvalForward(save, netip.MustParsePrefix("10.5.0.0/16"))
	fmt.Println(v.Dropped())
	fmt.Println(v.Reason)
	// Output:
	// true
	// policy DROP and no rule accepts traffic from or to 10.5.0.0/16 (flannel's FLANNEL-FWD chain is missing or not jumped to)
}
