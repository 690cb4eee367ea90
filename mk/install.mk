# install.mk: `make install` and `make uninstall` for operators; included
# from the Makefile.
#
#   make build && sudo make install [PREFIX=/usr/local] [DESTDIR=]
#
# What goes where (P = $(DESTDIR)$(PREFIX), E = $(DESTDIR)$(SYSCONFDIR)):
#   P/bin/flanneld, P/bin/flannelctl                    0755  from bin/ (make build)
#   $(DESTDIR)$(CNIBINDIR)/flannel                      0755  the CNI plugin (CNIBINDIR=/opt/cni/bin,
#                                                             where runtimes look, whatever PREFIX)
#   P/libexec/flannel/mk-docker-opts.sh                 0755  upstream's image has it at /opt/bin
#   P/lib/systemd/system/flanneld.service               0644  paths rewritten to PREFIX/SYSCONFDIR
#   E/systemd/system/docker.service.d/flannel.conf      0644  only if absent
#   E/sysconfig/flanneld                                0644  only if absent
#
# The unit goes to the vendor directory $(PREFIX)/lib/systemd/system, not to
# /etc/systemd/system: /etc is the administrator's layer, where a copy or a
# `systemctl edit` drop-in overrides ours and survives a reinstall. systemd
# searches /usr/local/lib/systemd/system and /usr/lib/systemd/system; for any
# other PREFIX, set SYSTEMDUNITDIR or `systemctl link` the unit.
#
# The Docker drop-in and the sysconfig file are the operator's configuration,
# so, like a package manager's conffiles, an existing copy is kept and a
# message says so. The binaries and the unit are replaced.
#
# install does not depend on build: it must not run the Go toolchain as root.

PREFIX         ?= /usr/local
DESTDIR        ?=
BINDIR         ?= $(PREFIX)/bin
LIBEXECDIR     ?= $(PREFIX)/libexec
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR     ?= /etc
CNIBINDIR      ?= /opt/cni/bin
INSTALL        ?= install
# Where `make build` put the binaries, relative to make's directory.
FLANNEL_BIN    ?= bin

flannel_dist := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))../dist)
flannel_dropin_dir := $(SYSCONFDIR)/systemd/system/docker.service.d

# flannel_conffile SRC DST: install SRC as DST unless DST already exists.
define flannel_conffile
	@if [ -e '$(2)' ]; then \
		echo "install: keeping existing $(2) (not replaced by $(1))"; \
	else \
		echo "$(INSTALL) -m 0644 $(1) $(2)"; \
		$(INSTALL) -m 0644 '$(1)' '$(2)'; \
	fi
endef

.PHONY: install uninstall

install:
	@for f in $(FLANNEL_BIN)/flanneld $(FLANNEL_BIN)/flannelctl $(FLANNEL_BIN)/flannel; do \
		[ -f "$$f" ] || { echo "install: $$f not found: run 'make build' first (as yourself, not root)" >&2; exit 1; }; \
	done
	$(INSTALL) -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(LIBEXECDIR)/flannel' '$(DESTDIR)$(SYSTEMDUNITDIR)' \
		'$(DESTDIR)$(flannel_dropin_dir)' '$(DESTDIR)$(SYSCONFDIR)/sysconfig' '$(DESTDIR)$(CNIBINDIR)'
	$(INSTALL) -m 0755 $(FLANNEL_BIN)/flanneld $(FLANNEL_BIN)/flannelctl '$(DESTDIR)$(BINDIR)/'
	$(INSTALL) -m 0755 $(FLANNEL_BIN)/flannel '$(DESTDIR)$(CNIBINDIR)/flannel'
	$(INSTALL) -m 0755 '$(flannel_dist)/mk-docker-opts.sh' '$(DESTDIR)$(LIBEXECDIR)/flannel/mk-docker-opts.sh'
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' \
		-e 's|/usr/local/libexec/|$(LIBEXECDIR)/|g' \
		-e 's|/etc/sysconfig/|$(SYSCONFDIR)/sysconfig/|g' \
		'$(flannel_dist)/flanneld.service' >'$(DESTDIR)$(SYSTEMDUNITDIR)/flanneld.service.tmp'
	chmod 0644 '$(DESTDIR)$(SYSTEMDUNITDIR)/flanneld.service.tmp'
	mv -f '$(DESTDIR)$(SYSTEMDUNITDIR)/flanneld.service.tmp' '$(DESTDIR)$(SYSTEMDUNITDIR)/flanneld.service'
	$(call flannel_conffile,$(flannel_dist)/docker-flannel.conf,$(DESTDIR)$(flannel_dropin_dir)/flannel.conf)
	$(call flannel_conffile,$(flannel_dist)/sysconfig/flanneld,$(DESTDIR)$(SYSCONFDIR)/sysconfig/flanneld)
	@if [ -z '$(DESTDIR)' ]; then echo "install: now run: systemctl daemon-reload && systemctl enable --now flanneld"; fi

# uninstall keeps $(SYSCONFDIR)/sysconfig/flanneld (the operator's settings)
# but removes the Docker drop-in, which would otherwise make docker.service
# require a unit that no longer exists.
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/flanneld' '$(DESTDIR)$(BINDIR)/flannelctl' \
		'$(DESTDIR)$(LIBEXECDIR)/flannel/mk-docker-opts.sh' \
		'$(DESTDIR)$(CNIBINDIR)/flannel' \
		'$(DESTDIR)$(SYSTEMDUNITDIR)/flanneld.service' \
		'$(DESTDIR)$(flannel_dropin_dir)/flannel.conf'
	rmdir '$(DESTDIR)$(LIBEXECDIR)/flannel' 2>/dev/null || true
	@if [ -e '$(DESTDIR)$(SYSCONFDIR)/sysconfig/flanneld' ]; then \
		echo "uninstall: kept $(DESTDIR)$(SYSCONFDIR)/sysconfig/flanneld"; fi
