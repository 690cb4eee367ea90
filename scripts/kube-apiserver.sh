#!/usr/bin/env bash
# Prints the path of the real kube-apiserver that the Kubernetes-mode tests
# run (internal/lab/kubeapi), building it first when it is not in the cache.
#
#   scripts/kube-apiserver.sh          build if missing, print the path
#   scripts/kube-apiserver.sh --path   print the path only (exit 1 if absent)
#
# The binary is built from the Go module proxy (tools/kube-apiserver pins
# k8s.io/kubernetes and its staging modules) into a cache outside the
# checkout, one directory per version, so a new work tree or a CI clone on
# the same machine reuses it. The build takes ~15 min of two cores and ~3 GB;
# it runs under nice so that it yields to everything else.
# FLANNEL_CACHE moves the cache (default /var/cache/flannel-go).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/kube-apiserver"
version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$mod/go.mod")
if [ -z "$version" ]; then
  echo "kube-apiserver: no k8s.io/kubernetes version in $mod/go.mod" >&2
  exit 1
fi
dir="${FLANNEL_CACHE:-/var/cache/flannel-go}/kube-apiserver/$version"
bin="$dir/kube-apiserver"

if [ "${1:-}" = "--path" ]; then
  echo "$bin"
  [ -x "$bin" ]
  exit
fi
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  PATH="$PATH:/usr/local/go/bin"
fi
mkdir -p "$dir"
# One build at a time: a second caller waits for the first and then finds
# the binary.
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$bin" ]; then
  echo "kube-apiserver: building $version into $dir (~15 min)" >&2
  start=$(date +%s)
  tmp="$dir/.kube-apiserver.$$"
  trap 'rm -f "$tmp"' EXIT
  pkg=k8s.io/component-base/version
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  (cd "$mod" && GOWORK=off GOFLAGS=-mod=readonly nice -n 15 \
    go build -trimpath -ldflags="$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$tmp" "$bin"
  trap - EXIT
  echo "kube-apiserver: built in $(($(date +%s) - start)) s, $(du -h "$bin" | cut -f1)" >&2
fi
echo "$bin"
