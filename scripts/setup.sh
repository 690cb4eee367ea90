#!/usr/bin/env bash
# Installs what the lab and the tests need on a fresh Debian/Ubuntu machine.
# Idempotent: it installs only what is missing. Needs root (the lab creates
# network namespaces).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (the lab creates network namespaces and devices)" >&2
  exit 1
fi

# command → Debian package
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check ip iproute2
check ping iputils-ping
check iptables iptables
check nft nftables
if [ "${1:-}" = "--test" ]; then
  check tcpdump tcpdump
  check iperf3 iperf3
  check etcd etcd-server
  check etcdctl etcd-client
  check ethtool ethtool
  check curl curl
  check python3 python3
  check dockerd docker.io
  check busybox busybox-static
  # bridge, host-local, portmap, … in /usr/lib/cni: the CNI plugin's delegates
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  echo "setup: add /usr/local/go/bin to PATH" >&2
fi
# The Kubernetes-mode tests run a real kube-apiserver, built once from the
# Go module proxy into a cache outside the checkout (15-25 minutes of both
# cores the first time, nothing after).
if [ "${1:-}" = "--test" ]; then
  if ! "$(dirname "$0")/kube-apiserver.sh" --path >/dev/null 2>&1; then
    echo "setup: building kube-apiserver once into the cache (15-25 min; later runs reuse it)"
  fi
  "$(dirname "$0")/kube-apiserver.sh" >/dev/null
fi
# The vxlan module must be loadable for the vxlan backend (built in on some kernels).
modprobe vxlan 2>/dev/null || true
exit 0
