# flannel: see README.md.
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.1.0-dev)
LDFLAGS := -s -w -X github.com/flannel-go/flannel/internal/version.Version=$(VERSION)
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build image demo test unit fuzz lint bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flanneld ./cmd/flanneld
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flannelctl ./cmd/flannelctl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flannel ./cmd/flannel
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/install-cni ./cmd/install-cni

# The container image (dist/Dockerfile, FROM scratch: builds offline) with
# the local Docker engine, tagged $(IMAGE):$(VERSION) and $(IMAGE):latest.
IMAGE ?= flannel-go/flannel
image: build
	dist/build-image.sh bin $(IMAGE):$(VERSION) $(IMAGE):latest

# The local lab: 3 hosts in network namespaces, a real etcd, one flanneld
# each, a container each, and a ping matrix; then it tears itself down.
demo: build
	@scripts/setup.sh
	./bin/flannelctl lab demo --hosts 3 --backend vxlan

# Everything: unit, real-etcd, real-kernel and end-to-end tests, then each
# fuzz target for a bounded number of executions.
test:
	@scripts/setup.sh --test
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory fuzz

FUZZTIME ?= 50000x
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	staticcheck ./...

bench: build
	./bin/flannelctl lab bench

clean:
	rm -rf bin

# install, uninstall (PREFIX, DESTDIR): see dist/README.md
include mk/install.mk
