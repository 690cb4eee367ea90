package kube_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/lease"
)

// BenchmarkWatchSync measures one flanneld's informer against a cluster of
// kubelet-like Nodes (FLANNEL_BENCH_NODES, default 5000), all flannel
// peers: time from Watch to the Reset update, bytes read for it, and the
// heap the informer holds afterwards; ours (protobuf, slim cache) beside
// upstream's way (JSON, whole objects). Run with -bench WatchSync
// -benchtime 1x; it is a measurement, not a timed test.
func BenchmarkWatchSync(b *testing.B) {
	nodes := 5000
	if v, err := strconv.Atoi(os.Getenv("FLANNEL_BENCH_NODES")); err == nil && v > 0 {
		nodes = v
	}
	s := kubetest.Start(b, kubeapi.Options{})
	admin, err := s.Client()
	if err != nil {
		b.Fatal(err)
	}
	conf := filepath.Join(b.TempDir(), "net-conf.json")
	if err := os.WriteFile(conf, []byte(`{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		b.Fatal(err)
	}
	createPeers(b, admin, nodes)

	base, err := kube.RESTConfig("", s.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		json bool
	}{{"ours", false}, {"upstream", true}} {
		b.Run(mode.name, func(b *testing.B) {
			for b.Loop() {
				cfg := base
				if mode.json {
					cfg = rest.CopyConfig(base)
					cfg.ContentType, cfg.AcceptContentTypes = "application/json", "application/json"
				}
				c, n := counted(b, cfg)
				// Used only after the sync, so not counted.
				m, err := metadata.NewForConfig(cfg)
				if err != nil {
					b.Fatal(err)
				}
				src, err := kube.New(context.Background(), kube.Options{Client: c, Metadata: m, NodeName: "bench-0", NetConfPath: conf})
				if err != nil {
					b.Fatal(err)
				}
				kube.SetFullCache(src, mode.json)
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				ctx, cancel := context.WithCancel(context.Background())
				got := make(chan int, 1)
				start := time.Now()
				var wg sync.WaitGroup
				wg.Go(func() {
					_ = src.Watch(ctx, func(u lease.Update) {
						if u.Reset {
							got <- len(u.Leases)
						}
					})
				})
				var peers int
				select {
				case peers = <-got:
				case <-time.After(5 * time.Minute):
					b.Fatal("no Reset within 5 min")
				}
				took := time.Since(start)
				runtime.GC()
				runtime.ReadMemStats(&after)
				cancel()
				wg.Wait()
				if peers != nodes {
					b.Fatalf("Reset has %d leases, want %d", peers, nodes)
				}
				b.ReportMetric(float64(took.Milliseconds()), "ms-to-reset")
				b.ReportMetric(float64(n.Load())/float64(nodes), "list-bytes/node")
				b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/float64(nodes), "heap-bytes/node")
			}
		})
	}
}

func createPeers(b *testing.B, c kubernetes.Interface, nodes int) {
	start := time.Now()
	ch := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 8 {
		wg.Go(func() {
			for i := range ch {
				n := kubeletNode(fmt.Sprintf("bench-%d", i))
				cidr := fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)
				n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
				n.Annotations = map[string]string{
					"flannel.alpha.coreos.com/kube-subnet-manager": "true",
					"flannel.alpha.coreos.com/backend-type":        "vxlan",
					"flannel.alpha.coreos.com/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:0a:%02x:%02x:00"}`, i/256, i%256),
					"flannel.alpha.coreos.com/public-ip":           fmt.Sprintf("198.18.%d.%d", i/250, i%250+1),
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{FieldManager: "kubelet"})
				if err == nil {
					created.Status = kubeletStatus(time.Now())
					_, err = c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{FieldManager: "kubelet"})
				}
				cancel()
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for i := range nodes {
		ch <- i
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	b.Logf("created %d nodes in %v", nodes, time.Since(start).Round(time.Millisecond))
}
