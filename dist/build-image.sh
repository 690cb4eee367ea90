#!/bin/sh
# build-image.sh BINDIR TAG [TAG...]: builds the flannel image (dist/Dockerfile)
# from the static binaries in BINDIR (flanneld, flannelctl, flannel,
# install-cni; `make build` puts them in bin/) with the Docker engine that
# DOCKER_HOST (or the default socket) names. FROM scratch: nothing is pulled,
# so it works offline.
#
# The context is a directory staged with exactly the image's files, not the
# repository: the engine then receives a few MB, and a stray file in the
# tree cannot end up in the image.
set -eu
if [ $# -lt 2 ]; then
	echo "usage: $0 BINDIR TAG [TAG...]" >&2
	exit 2
fi
bindir=$1
shift
dist=$(cd "$(dirname "$0")" && pwd)
for f in flanneld flannelctl flannel install-cni; do
	if [ ! -x "$bindir/$f" ]; then
		echo "build-image: $bindir/$f not found: run 'make build' first" >&2
		exit 1
	fi
	# A dynamically linked binary would fail to start in a scratch image.
	if LC_ALL=C file -L "$bindir/$f" 2>/dev/null | grep -q 'dynamically linked'; then
		echo "build-image: $bindir/$f is dynamically linked; build with CGO_ENABLED=0" >&2
		exit 1
	fi
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bindir/flanneld" "$bindir/flannelctl" "$bindir/flannel" "$bindir/install-cni" "$ctx/"
cp "$dist/mk-docker-opts.sh" "$dist/Dockerfile" "$ctx/"
chmod 0755 "$ctx/flanneld" "$ctx/flannelctl" "$ctx/flannel" "$ctx/install-cni" "$ctx/mk-docker-opts.sh"
version=$("$bindir/flanneld" -version 2>&1 || true)
tags=
for t in "$@"; do
	tags="$tags -t $t"
done
# The classic builder: it needs no buildx plugin and no BuildKit daemon.
# shellcheck disable=SC2086
DOCKER_BUILDKIT=0 docker build --build-arg "VERSION=$version" $tags "$ctx"
