package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/ns"
)

// Pinger is a ping from a container that runs until Stop, for counting
// the packets a fault loses while it lasts.
type Pinger struct {
	From, To string // names, for messages: "c1", "10.5.3.2"
	cmd      *exec.Cmd
	out      logbuf.Buffer
	done     chan error
	stopOnce sync.Once
	result   PingResult
}

// PingResult is what a Pinger saw.
type PingResult struct {
	Sent     int   // echo requests sent, the one in flight at Stop excluded
	Received int   // distinct requests answered
	Lost     []int // sequence numbers of the requests never answered
	Output   string
}

func (r PingResult) String() string {
	return fmt.Sprintf("%d/%d answered", r.Received, r.Sent)
}

// StartPing starts pinging dst from h's container every interval.
func (l *Lab) StartPing(ctx context.Context, h *Host, dst netip.Addr, interval time.Duration) (*Pinger, error) {
	cns, err := ns.Open(h.CNS)
	if err != nil {
		return nil, err
	}
	iv := strconv.FormatFloat(interval.Seconds(), 'f', 3, 64)
	p := &Pinger{From: "c" + strings.TrimPrefix(h.Name, "h"), To: dst.String(), done: make(chan error, 1)}
	// -D timestamps each line and -O reports each unanswered request as
	// it happens, so a failure shows when the loss was.
	p.cmd = cns.Command(ctx, "ping", "-n", "-D", "-O", "-i", iv, "-W", "1", dst.String())
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: ping from %s: %w", h.Name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p, nil
}

var (
	replyRE   = regexp.MustCompile(`icmp_seq=(\d+) ttl=`)
	summaryRE = regexp.MustCompile(`(\d+) packets transmitted`)
)

// Stop interrupts the ping and returns what it saw. The request sent last
// may still be on its way when ping is interrupted, so an unanswered last
// request is not counted as lost (nor as sent). Stop may be called more
// than once.
func (p *Pinger) Stop() PingResult {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		p.result = parsePing(p.out.String())
	})
	return p.result
}

func parsePing(out string) PingResult {
	r := PingResult{Output: out}
	answered := map[int]bool{}
	for _, m := range replyRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		answered[n] = true
	}
	if m := summaryRE.FindStringSubmatch(out); m != nil {
		r.Sent, _ = strconv.Atoi(m[1])
	}
	if r.Sent > 0 && !answered[r.Sent] {
		r.Sent-- // in flight at the interrupt
	}
	for seq := 1; seq <= r.Sent; seq++ {
		if answered[seq] {
			r.Received++
		} else {
			r.Lost = append(r.Lost, seq)
		}
	}
	slices.Sort(r.Lost)
	return r
}

// PingMatrix pings, all at once, every host's container from every other
// host's container, count times each, and returns got[i][j]: the replies
// Hosts[i] received from Hosts[j]'s container (0 on the diagonal).
func (l *Lab) PingMatrix(ctx context.Context, count int, interval time.Duration) [][]int {
	n := len(l.Hosts)
	got := make([][]int, n)
	var wg sync.WaitGroup
	for i := range n {
		got[i] = make([]int, n)
		for j := range n {
			if i == j {
				continue
			}
			wg.Go(func() {
				got[i][j], _, _ = l.Ping(ctx, l.Hosts[i], l.Hosts[j].Container, count, interval)
			})
		}
	}
	wg.Wait()
	return got
}
