package kubestate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/flannel-go/flannel/internal/kube"
)

func writeKubeconfig(t *testing.T, dir, name, server, ctx string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = ctx
	p := filepath.Join(dir, name)
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// The client config is found as kubectl finds it.
func TestRESTConfigAsKubectl(t *testing.T) {
	dir := t.TempDir()
	a := writeKubeconfig(t, dir, "a", "https://a:6443", "a")
	b := writeKubeconfig(t, dir, "b", "https://b:6443", "")
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	host := func(kubeconfig, context string) string {
		t.Helper()
		cfg, err := RESTConfig(kubeconfig, context, getenv)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ContentType != kube.ProtobufContentType || !strings.HasPrefix(cfg.AcceptContentTypes, kube.ProtobufContentType) {
			t.Errorf("content types %q %q, want protobuf", cfg.ContentType, cfg.AcceptContentTypes)
		}
		return cfg.Host
	}
	if h := host(b, "b"); h != "https://b:6443" {
		t.Errorf("--kubeconfig with --context: %s", h)
	}
	// $KUBECONFIG is a list, merged; the first file's current context wins.
	env["KUBECONFIG"] = b + string(os.PathListSeparator) + a
	if h := host("", ""); h != "https://a:6443" {
		t.Errorf("$KUBECONFIG merged: %s", h)
	}
	if h := host("", "b"); h != "https://b:6443" {
		t.Errorf("$KUBECONFIG with --context=b: %s", h)
	}
	// --kubeconfig wins over $KUBECONFIG.
	if h := host(a, ""); h != "https://a:6443" {
		t.Errorf("--kubeconfig over $KUBECONFIG: %s", h)
	}
	env["KUBECONFIG"] = filepath.Join(dir, "missing")
	if _, err := RESTConfig("", "", getenv); err == nil || !strings.Contains(err.Error(), "$KUBECONFIG="+env["KUBECONFIG"]) {
		t.Errorf("no config: %v", err)
	}
	if _, err := RESTConfig(filepath.Join(dir, "missing"), "", getenv); err == nil || !strings.Contains(err.Error(), "--kubeconfig=") {
		t.Errorf("missing --kubeconfig: %v", err)
	}
}

func TestOpenRejectsBadPrefix(t *testing.T) {
	if _, err := Open(Options{AnnotationPrefix: "a/b/c", Kubeconfig: "x"}); err == nil || !strings.Contains(err.Error(), "at most one") {
		t.Errorf("Open with a bad prefix: %v", err)
	}
}
