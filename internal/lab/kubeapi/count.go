package kubeapi

import (
	"io"
	"net/http"
	"sync/atomic"
)

// CountBytes returns a transport wrapper for rest.Config.Wrap that adds
// the bytes of every response body read through it to n: what a client
// really read from the apiserver (after any compression), the figure the
// lab's and the tests' watch costs compare.
func CountBytes(n *atomic.Int64) func(http.RoundTripper) http.RoundTripper {
	return func(rt http.RoundTripper) http.RoundTripper { return countingRT{rt, n} }
}

type countingRT struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		resp.Body = countingBody{resp.Body, c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
