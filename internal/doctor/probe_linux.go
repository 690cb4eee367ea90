package doctor

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	smallProbe = 84 // what ping sends by default: 20 + 8 + 56
	ipHdrLen   = 20
	icmpHdrLen = 8
	tokenLen   = 8
	attempts   = 3
)

// probe sends every probe up to three times within timeout over one raw
// ICMP socket and matches replies by echo ID, sequence (the probe's index)
// and a random token in the payload, so replies to other pingers on the
// host never count.
func probe(ctx context.Context, probes []Probe, timeout time.Duration) []ProbeResult {
	res := make([]ProbeResult, len(probes))
	if len(probes) == 0 {
		return res
	}
	if len(probes) > 1<<16 {
		for i := range res {
			res[i].Err = errors.New("too many probes")
		}
		return res
	}
	conn, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		for i := range res {
			res[i].Err = fmt.Errorf("raw ICMP socket (needs root or CAP_NET_RAW): %w", err)
		}
		return res
	}
	ipc := conn.(*net.IPConn)
	var tok [tokenLen + 2]byte
	_, _ = rand.Read(tok[:])
	id := binary.BigEndian.Uint16(tok[tokenLen:])
	token := tok[:tokenLen]

	type event struct {
		seq     int
		reply   bool
		pathMTU int
	}
	events := make(chan event, len(probes))
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := ipc.ReadFrom(buf)
			if err != nil {
				return
			}
			if seq, reply, mtu, ok := parseICMP(buf[:n], id, token); ok && seq < len(probes) {
				select {
				case events <- event{seq, reply, mtu}:
				default: // duplicates beyond one per probe are not needed
				}
			}
		}
	})
	defer func() {
		ipc.Close()
		wg.Wait()
	}()

	df := false
	setDF := func(on bool) error {
		if on == df {
			return nil
		}
		mode := unix.IP_PMTUDISC_DONT
		if on {
			mode = unix.IP_PMTUDISC_DO
		}
		rc, err := ipc.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode)
		}); err != nil {
			return err
		}
		if serr == nil {
			df = on
		}
		return serr
	}
	if err := setDF(true); err == nil {
		_ = setDF(false) // start from a known state
	}

	done := make([]bool, len(probes))
	pending := len(probes)
	finish := func(i int) {
		if !done[i] {
			done[i] = true
			pending--
		}
	}
	round := timeout / attempts
	for a := 0; a < attempts && pending > 0; a++ {
		for i, p := range probes {
			if done[i] {
				continue
			}
			if err := setDF(p.DF); err != nil {
				res[i].Err = fmt.Errorf("set don't-fragment: %w", err)
				finish(i)
				continue
			}
			pkt := echoRequest(id, uint16(i), token, p.Size)
			_, err := ipc.WriteTo(pkt, &net.IPAddr{IP: p.Dst.AsSlice()})
			switch {
			case errors.Is(err, syscall.EMSGSIZE):
				res[i].TooBig = true
				res[i].RouteMTU = routeMTU(p.Dst)
				finish(i)
			case err != nil && a == attempts-1:
				res[i].Err = fmt.Errorf("send to %s: %w", p.Dst, err)
			}
		}
		timer := time.NewTimer(round)
	wait:
		for pending > 0 {
			select {
			case e := <-events:
				if done[e.seq] {
					continue
				}
				if e.reply {
					res[e.seq].Replied = true
					res[e.seq].Err = nil
					finish(e.seq)
				} else if e.pathMTU > 0 {
					res[e.seq].PathMTU = e.pathMTU
					finish(e.seq)
				}
			case <-timer.C:
				break wait
			case <-ctx.Done():
				timer.Stop()
				for i := range res {
					if !done[i] && res[i].Err == nil {
						res[i].Err = ctx.Err()
					}
				}
				return res
			}
		}
		timer.Stop()
	}
	return res
}

// routeMTU is the MTU of the route to dst, a cached path MTU included
// (what `ip route get` shows), or 0.
func routeMTU(dst netip.Addr) int {
	rs, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(rs) == 0 {
		return 0
	}
	if rs[0].MTU > 0 {
		return rs[0].MTU
	}
	if l, err := netlink.LinkByIndex(rs[0].LinkIndex); err == nil {
		return l.Attrs().MTU
	}
	return 0
}

// echoRequest builds an ICMP echo request for an IP packet of size bytes
// (smallProbe when 0).
func echoRequest(id, seq uint16, token []byte, size int) []byte {
	if size <= 0 {
		size = smallProbe
	}
	n := max(size-ipHdrLen, icmpHdrLen+len(token))
	b := make([]byte, n)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[icmpHdrLen:], token)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// parseICMP matches an ICMP message (IP header stripped) to one of our
// probes: an echo reply carrying our ID and token, or a "fragmentation
// needed" error quoting our request, with the MTU it reports.
func parseICMP(b []byte, id uint16, token []byte) (seq int, reply bool, pathMTU int, ok bool) {
	if len(b) < icmpHdrLen {
		return 0, false, 0, false
	}
	switch {
	case b[0] == 0 && b[1] == 0: // echo reply
		if len(b) < icmpHdrLen+len(token) || binary.BigEndian.Uint16(b[4:]) != id ||
			string(b[icmpHdrLen:icmpHdrLen+len(token)]) != string(token) {
			return 0, false, 0, false
		}
		return int(binary.BigEndian.Uint16(b[6:])), true, 0, true
	case b[0] == 3 && b[1] == 4: // destination unreachable: fragmentation needed
		mtu := int(binary.BigEndian.Uint16(b[6:]))
		orig := b[icmpHdrLen:]
		if len(orig) < ipHdrLen {
			return 0, false, 0, false
		}
		ihl := int(orig[0]&0x0f) * 4
		if orig[0]>>4 != 4 || ihl < ipHdrLen || len(orig) < ihl+icmpHdrLen || orig[9] != 1 {
			return 0, false, 0, false
		}
		q := orig[ihl:]
		if q[0] != 8 || binary.BigEndian.Uint16(q[4:]) != id {
			return 0, false, 0, false
		}
		// A router that does not say its MTU (RFC 792 style) tells us
		// nothing the timeout does not.
		return int(binary.BigEndian.Uint16(q[6:])), false, mtu, mtu > 0
	}
	return 0, false, 0, false
}
