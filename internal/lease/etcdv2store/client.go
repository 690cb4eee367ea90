package etcdv2store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// etcd v2 error codes this package acts on.
const (
	codeKeyNotFound       = 100
	codeCompareFailed     = 101
	codeNotFile           = 102
	codeNodeExist         = 105
	codeUnauthorized      = 110
	codeEventIndexCleared = 401
	codeWatcherCleared    = 400
)

// maxBody bounds a response. A listing of 10 000 leases is a few MB; the
// limit keeps a broken server or proxy from exhausting memory.
const maxBody = 64 << 20

// node is a v2 key or directory.
type node struct {
	Key           string     `json:"key"`
	Value         string     `json:"value"`
	Dir           bool       `json:"dir"`
	Expiration    *time.Time `json:"expiration"` // absent for keys without TTL
	TTL           int64      `json:"ttl"`
	ModifiedIndex int64      `json:"modifiedIndex"`
	CreatedIndex  int64      `json:"createdIndex"`
	Nodes         []*node    `json:"nodes"`
}

// response is the body of a successful v2 keys request.
type response struct {
	Action   string `json:"action"`
	Node     *node  `json:"node"`
	PrevNode *node  `json:"prevNode"`
}

// apiError is etcd's error body, e.g.
// {"errorCode":100,"message":"Key not found","cause":"/x","index":3}.
type apiError struct {
	Code    int    `json:"errorCode"`
	Message string `json:"message"`
	Cause   string `json:"cause"`
	Index   int64  `json:"index"`
	status  int    // HTTP status
}

func (e *apiError) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("HTTP %d: %s", e.status, e.Message)
	}
	if e.Cause != "" {
		return fmt.Sprintf("etcd error %d: %s (%s)", e.Code, e.Message, e.Cause)
	}
	return fmt.Sprintf("etcd error %d: %s", e.Code, e.Message)
}

// isCode reports whether err is an etcd error with one of the codes.
func isCode(err error, codes ...int) bool {
	var ae *apiError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.Code == c {
			return true
		}
	}
	return false
}

// errWatchEnded: etcd answered a long poll with headers but no event. It
// does so when it drops a watcher it could not feed fast enough.
var errWatchEnded = errors.New("etcd ended the watch without an event")

// errClosed: the store was closed.
var errClosed = errors.New("etcdv2store: store closed")

// request is one call to <endpoint>/v2/keys<key>.
type request struct {
	method string
	key    string     // etcd key, starting with "/"
	query  url.Values // in the URL
	form   url.Values // PUT body
	// wait marks a long poll: it has no overall timeout, only the
	// transport's dial and response-header timeouts (etcd sends the
	// headers of a watch at once).
	wait bool
	// onHeaders, if set, is called when a 2xx status arrives, before the
	// body: for a long poll that is when the watch is known to be set up.
	onHeaders func()
}

// result is a successful reply.
type result struct {
	index int64 // X-Etcd-Index: etcd's index when it answered
	response
}

// client speaks the v2 keys protocol to a list of endpoints.
type client struct {
	hc        *http.Client
	endpoints []*url.URL
	user      string
	pass      string
	timeout   time.Duration
	log       *slog.Logger
	life      context.Context // cancelled by Close

	// preferred is the index of the endpoint that answered last; requests
	// start there, so one dead endpoint costs a failed dial only once.
	preferred atomic.Int32

	mu   sync.Mutex
	down bool // guarded by mu: every endpoint failed last time
}

// do sends r to the preferred endpoint and then to the others in turn.
// Reads move on after any transport failure or 5xx answer. Writes move on
// only when the request never left this host (dial or TLS handshake
// failed): a write that reached etcd may have been applied, and repeating
// it elsewhere could turn our own create into "key exists".
func (c *client) do(ctx context.Context, r request) (result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.life, func() { cancel(errClosed) })
	defer stop()

	n := len(c.endpoints)
	first := int(c.preferred.Load())
	var errs []string // of the endpoints tried before
	for i := range n {
		idx := (first + i) % n
		ep := c.endpoints[idx]
		res, sent, err := c.attempt(ctx, ep, r)
		if err == nil {
			c.preferred.Store(int32(idx))
			c.reachable()
			return res, nil
		}
		var ae *apiError
		if errors.Is(err, errWatchEnded) || errors.As(err, &ae) && (ae.status < 500 || r.method != http.MethodGet) {
			// etcd answered: the answer holds for the whole cluster.
			c.preferred.Store(int32(idx))
			c.reachable()
			return result{}, err
		}
		if ctx.Err() != nil {
			// The caller gave up (or closed the store): not an outage.
			if errors.Is(context.Cause(ctx), errClosed) {
				return result{}, errClosed
			}
			return result{}, fmt.Errorf("etcd at %s: %w", ep.Redacted(), err)
		}
		if sent && r.method != http.MethodGet {
			return result{}, fmt.Errorf("etcd at %s (outcome unknown): %w", ep.Redacted(), err)
		}
		if i < n-1 {
			errs = append(errs, fmt.Sprintf("%s: %v", ep.Redacted(), err))
			continue
		}
		c.unreachable()
		return result{}, fmt.Errorf("etcd at %s: %w", strings.Join(append(errs, ep.Redacted()), "; "), err)
	}
	panic("unreachable: no endpoints")
}

// attempt sends r to one endpoint. sent reports whether the request was
// written to the connection.
func (c *client) attempt(ctx context.Context, ep *url.URL, r request) (res result, sent bool, err error) {
	if !r.wait {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				wrote.Store(true)
			}
		},
	})
	u := *ep
	u.Path = strings.TrimRight(u.Path, "/") + "/v2/keys" + r.key
	u.RawPath = ""
	u.RawQuery = r.query.Encode()
	var body io.Reader
	if r.form != nil {
		body = strings.NewReader(r.form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return result{}, false, err
	}
	if r.form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return result{}, wrote.Load(), err
	}
	defer resp.Body.Close()
	if r.onHeaders != nil && resp.StatusCode/100 == 2 {
		r.onHeaders()
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return result{}, true, fmt.Errorf("read response: %w", err)
	}
	if len(b) > maxBody {
		return result{}, true, fmt.Errorf("response larger than %d bytes", maxBody)
	}
	res, err = parseResponse(resp.StatusCode, resp.Header.Get("X-Etcd-Index"), b)
	return res, true, err
}

// parseResponse decodes a reply: a response for 2xx, an *apiError
// otherwise.
func parseResponse(status int, etcdIndex string, b []byte) (result, error) {
	var res result
	if etcdIndex != "" {
		i, err := strconv.ParseInt(etcdIndex, 10, 64)
		if err != nil || i < 0 {
			return result{}, fmt.Errorf("bad X-Etcd-Index header %q", etcdIndex)
		}
		res.index = i
	}
	if status < 200 || status > 299 {
		ae := &apiError{status: status}
		if json.Unmarshal(b, ae) != nil || (ae.Code == 0 && ae.Message == "") {
			ae.Code = 0
			ae.Message = strings.TrimSpace(string(b))
			if len(ae.Message) > 200 {
				ae.Message = ae.Message[:200] + "…"
			}
		}
		return result{}, ae
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return result{}, errWatchEnded
	}
	if err := json.Unmarshal(b, &res.response); err != nil {
		return result{}, fmt.Errorf("decode etcd response: %w", err)
	}
	if res.Node == nil {
		return result{}, errors.New("etcd response without a node")
	}
	return res, nil
}

// unreachable logs the start of an outage, once.
func (c *client) unreachable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.down {
		c.down = true
		c.log.Warn("etcd unreachable", "endpoints", c.endpointList())
	}
}

// reachable logs the end of an outage, once.
func (c *client) reachable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down {
		c.down = false
		c.log.Info("etcd reachable again", "endpoints", c.endpointList())
	}
}

func (c *client) endpointList() string {
	s := make([]string, len(c.endpoints))
	for i, ep := range c.endpoints {
		s[i] = ep.Redacted()
	}
	return strings.Join(s, ",")
}
