package etcdv2store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
)

// rawEtcd talks to etcd's v2 API directly, as an operator with curl would.
type rawEtcd struct {
	url  string
	hc   *http.Client
	user string
	pass string
}

func newRaw(url string) *rawEtcd { return &rawEtcd{url: url, hc: &http.Client{}} }

// node is the part of a v2 node the tests look at.
type node struct {
	Key           string     `json:"key"`
	Value         string     `json:"value"`
	Dir           bool       `json:"dir"`
	Expiration    *time.Time `json:"expiration"`
	TTL           int64      `json:"ttl"`
	CreatedIndex  int64      `json:"createdIndex"`
	ModifiedIndex int64      `json:"modifiedIndex"`
}

// do sends one request; form goes in the body for PUT and in the query
// otherwise. It returns the status and the body.
func (r *rawEtcd) do(ctx context.Context, method, path string, form url.Values) (int, []byte, error) {
	u := r.url + path
	var body io.Reader
	if method == http.MethodPut || method == http.MethodPost {
		body = strings.NewReader(form.Encode())
	} else if len(form) > 0 {
		u += "?" + form.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if r.user != "" {
		req.SetBasicAuth(r.user, r.pass)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// must is do that fails the test unless the status is 2xx.
func (r *rawEtcd) must(t testing.TB, method, path string, form url.Values) []byte {
	t.Helper()
	st, b, err := r.do(leasetest.Ctx(t), method, path, form)
	if err != nil || st/100 != 2 {
		t.Fatalf("%s %s: %d %s %v", method, path, st, b, err)
	}
	return b
}

// get reads one key's node; ok is false when it does not exist.
func (r *rawEtcd) get(t testing.TB, key string) (n node, ok bool) {
	t.Helper()
	st, b, err := r.do(leasetest.Ctx(t), http.MethodGet, "/v2/keys"+key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st == http.StatusNotFound {
		return node{}, false
	}
	var resp struct{ Node node }
	if st != http.StatusOK || json.Unmarshal(b, &resp) != nil {
		t.Fatalf("GET %s: %d %s", key, st, b)
	}
	return resp.Node, true
}

// testStore adds the suite's optional capabilities through the raw API.
type testStore struct {
	*etcdv2store.Store
	raw *rawEtcd
}

func (s testStore) PutRaw(ctx context.Context, key string, value []byte) error {
	st, b, err := s.raw.do(ctx, http.MethodPut, "/v2/keys"+lease.KeyPath(s.Prefix(), key), url.Values{"value": {string(value)}})
	if err == nil && st/100 != 2 {
		err = fmt.Errorf("put raw %s: %d %s", key, st, b)
	}
	return err
}

// Compact is the v2 equivalent of compaction: etcd keeps only the last
// 1000 events of the whole keyspace, so 1001 writes elsewhere push every
// older event out. rev is ignored: everything up to now goes.
func (s testStore) Compact(ctx context.Context, _ int64) error {
	return fillHistory(ctx, s.raw, s.Prefix()+"/filler")
}

func fillHistory(ctx context.Context, r *rawEtcd, key string) error {
	for i := range 1001 {
		st, b, err := r.do(ctx, http.MethodPut, "/v2/keys"+key, url.Values{"value": {fmt.Sprint(i)}})
		if err == nil && st/100 != 2 {
			err = fmt.Errorf("%d %s", st, b)
		}
		if err != nil {
			return fmt.Errorf("write %d to %s: %w", i, key, err)
		}
	}
	return nil
}

func newStore(t testing.TB, o etcdv2store.Options) *etcdv2store.Store {
	t.Helper()
	if o.Log == nil {
		o.Log = testLog(t)
	}
	return etcdtest.NewStore(t, etcdv2store.New, o)
}

// testLog sends the store's log to the test's output.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestConforms(t *testing.T) {
	e := startEtcd(t, etcdOpts{})
	raw := newRaw(e.URL)
	leasetest.RunStoreTests(t, func(t *testing.T) lease.Store {
		return testStore{newStore(t, etcdv2store.Options{Endpoints: []string{e.URL}}), raw}
	})
}
