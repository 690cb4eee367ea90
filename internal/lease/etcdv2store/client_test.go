package etcdv2store_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
)

// A write that reached an endpoint is not repeated on the next one (it may
// have been applied, and a repeated create would report our own key as
// taken); a read is, and so is a read answered with a server error.
func TestFailoverOnlyWhenSafe(t *testing.T) {
	// hangup reads the request and drops the connection without answering.
	hangup := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer hangup.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"errorCode":300,"message":"Raft Internal Error","cause":"etcdserver: request timed out","index":0}`)
	}))
	defer broken.Close()
	var mu sync.Mutex
	var seen []string // requests the good endpoint received
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("X-Etcd-Index", "7")
		io.WriteString(w, `{"action":"get","node":{"key":"/p/subnets","dir":true,"nodes":[
			{"key":"/p/subnets/10.5.1.0-24","value":"{\"PublicIP\":\"192.168.1.1\"}","modifiedIndex":5,"createdIndex":5}]}}`)
	}))
	defer good.Close()
	requests := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}

	s := newStore(t, etcdv2store.Options{Endpoints: []string{hangup.URL, good.URL}, Prefix: "/p", Timeout: time.Second})
	_, err := s.Create(leasetest.Ctx(t), mkLease("10.5.2.0/24", "192.168.1.2"), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "outcome unknown") || !strings.Contains(err.Error(), hangup.URL) {
		t.Fatalf("Create through a dropped connection: %v, want an error naming %s with unknown outcome", err, hangup.URL)
	}
	if r := requests(); len(r) != 0 {
		t.Fatalf("write repeated on the next endpoint: %v", r)
	}
	for _, eps := range [][]string{{hangup.URL, good.URL}, {broken.URL, good.URL}} {
		s := newStore(t, etcdv2store.Options{Endpoints: eps, Prefix: "/p", Timeout: time.Second})
		ls, rev, err := s.Leases(leasetest.Ctx(t))
		if err != nil || rev != 7 || len(ls) != 1 || ls[0].Subnet != netip.MustParsePrefix("10.5.1.0/24") || !ls[0].Reserved() {
			t.Fatalf("Leases via %s then %s = %+v, %d, %v", eps[0], eps[1], ls, rev, err)
		}
	}
	if r := requests(); len(r) != 2 || r[0] != "GET /v2/keys/p/subnets" {
		t.Fatalf("good endpoint saw %v, want two listings", r)
	}
}
