package lab

import (
	"slices"
	"testing"
)

func TestParsePing(t *testing.T) {
	cases := []struct {
		name           string
		out            string
		sent, received int
		lost           []int
	}{
		{"all answered", `PING 10.5.1.2 (10.5.1.2) 56(84) bytes of data.
[1.0] 64 bytes from 10.5.1.2: icmp_seq=1 ttl=62 time=0.1 ms
[1.1] 64 bytes from 10.5.1.2: icmp_seq=2 ttl=62 time=0.1 ms

--- 10.5.1.2 ping statistics ---
2 packets transmitted, 2 received, 0% packet loss, time 100ms
`, 2, 2, nil},
		{"last one in flight at the interrupt", `[1.0] 64 bytes from 10.5.1.2: icmp_seq=1 ttl=62 time=0.1 ms
[1.1] 64 bytes from 10.5.1.2: icmp_seq=2 ttl=62 time=0.1 ms
3 packets transmitted, 2 received, 33% packet loss, time 200ms
`, 2, 2, nil},
		{"lost in the middle", `[1.0] 64 bytes from 10.5.1.2: icmp_seq=1 ttl=62 time=0.1 ms
[1.2] no answer yet for icmp_seq=2
[1.2] no answer yet for icmp_seq=3
[1.3] 64 bytes from 10.5.1.2: icmp_seq=4 ttl=62 time=0.1 ms
4 packets transmitted, 2 received, 50% packet loss, time 300ms
`, 4, 2, []int{2, 3}},
		{"duplicates count once", `[1.0] 64 bytes from 10.5.1.2: icmp_seq=1 ttl=62 time=0.1 ms
[1.0] 64 bytes from 10.5.1.2: icmp_seq=1 ttl=62 time=0.1 ms (DUP!)
1 packets transmitted, 1 received, +1 duplicates, 0% packet loss, time 0ms
`, 1, 1, nil},
		{"nothing ran", "connect: Network is unreachable\n", 0, 0, nil},
	}
	for _, c := range cases {
		r := parsePing(c.out)
		if r.Sent != c.sent || r.Received != c.received || !slices.Equal(r.Lost, c.lost) {
			t.Errorf("%s: sent %d received %d lost %v; want %d %d %v", c.name, r.Sent, r.Received, r.Lost, c.sent, c.received, c.lost)
		}
	}
}
