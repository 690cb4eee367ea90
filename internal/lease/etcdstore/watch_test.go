package etcdstore

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
)

// scriptedWatcher stands in for the etcd client's watcher: call i of
// Watch gets the responses script[i], after which the channel is closed
// (a broken watch) unless it is the last call, which stays open.
type scriptedWatcher struct {
	script [][]clientv3.WatchResponse

	mu    sync.Mutex
	revs  []int64 // start revision of each call
	times []time.Time
}

func (w *scriptedWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	w.mu.Lock()
	i := len(w.revs)
	w.revs = append(w.revs, clientv3.OpGet(key, opts...).Rev())
	w.times = append(w.times, time.Now())
	w.mu.Unlock()
	ch := make(chan clientv3.WatchResponse, 10)
	if i >= len(w.script) {
		close(ch)
		return ch
	}
	for _, r := range w.script[i] {
		ch <- r
	}
	if i < len(w.script)-1 {
		close(ch)
		return ch
	}
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch
}

func (w *scriptedWatcher) RequestProgress(context.Context) error { return nil }
func (w *scriptedWatcher) Close() error                          { return nil }

func put(rev int64, key, value string) clientv3.WatchResponse {
	return clientv3.WatchResponse{
		Header: &pb.ResponseHeader{Revision: rev},
		Events: []*clientv3.Event{{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(subnets + key), Value: []byte(value), ModRevision: rev}}},
	}
}

// A watch that keeps breaking is re-created from the last revision seen,
// with growing pauses (no busy loop), logged once when it breaks and once
// when it works again.
func TestWatchRecreatesWithBackoff(t *testing.T) {
	var buf logbuf.Buffer
	s, err := New(Options{Endpoints: []string{"http://127.0.0.1:1"}, Log: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	noLeader := clientv3.WatchResponse{Canceled: true, CancelReason: "etcdserver: no leader"}
	w := &scriptedWatcher{script: [][]clientv3.WatchResponse{
		{put(11, "10.5.1.0-24", `{"PublicIP":"192.168.1.1"}`)}, // then closed
		nil,        // closed at once
		{noLeader}, // cancelled by the server
		nil,
		{put(12, "10.5.2.0-24", `{"PublicIP":"192.168.1.2"}`)}, // stays open
	}}
	s.cli.Watcher = w

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	err = s.Watch(ctx, 10, func(evs []lease.Event) {
		for _, e := range evs {
			got = append(got, e.Lease.Key())
		}
		if len(got) == 2 {
			cancel()
		}
	})
	if err != context.Canceled {
		t.Fatalf("Watch = %v, want context.Canceled", err)
	}
	if strings.Join(got, " ") != "10.5.1.0-24 10.5.2.0-24" {
		t.Fatalf("events %v", got)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if want := []int64{11, 12, 12, 12, 12}; !slices.Equal(w.revs, want) {
		t.Errorf("watches started at revisions %v, want %v", w.revs, want)
	}
	for i := 2; i < len(w.times); i++ {
		prev, gap := w.times[i-1].Sub(w.times[i-2]), w.times[i].Sub(w.times[i-1])
		if gap < 80*time.Millisecond || gap < prev {
			t.Errorf("pause before watch %d was %v after %v: want ≥ 80 ms and growing", i, gap, prev)
		}
	}
	log := buf.String()
	if n := strings.Count(log, "etcd watch interrupted"); n != 1 {
		t.Errorf("%d interruption warnings for one outage, want 1:\n%s", n, log)
	}
	if n := strings.Count(log, "etcd watch resumed"); n != 1 {
		t.Errorf("%d recovery messages, want 1:\n%s", n, log)
	}
}
