# pyvirtd developer entry points: make run | test | fuzz | bench | gen | clean.
# Everything the tests need is installed from here, so a fresh Debian 12
# machine (and CI) needs nothing but `make test`.

PYTHON ?= python3
VENV := .venv
PROTOCOL_JSON ?= ../shared/reference/libvirt-rpc.json
PYTEST_ARGS ?= tests

# Debian packages the tests need:
#   libvirt-dev, pkg-config, gcc  build libvirt-python from source
#   libvirt-clients               virsh and virt-admin, the reference clients
#   libvirt-daemon                libvirtd, the reference daemon of the bench
#   virtinst                      virt-install, a client the integration tests drive
#   qemu-utils                    qemu-img, which the storage subsystem creates and inspects volumes with
#   qemu-system-x86, ovmf         the hypervisor the QEMU driver runs guests on, and UEFI firmware
DEB_PACKAGES := libvirt-clients libvirt-dev libvirt-daemon pkg-config gcc virtinst qemu-utils \
                qemu-system-x86 ovmf
DEB_PACKAGES += dnsmasq-base
DEB_PACKAGES += nftables
# busybox-static: the network tests' DHCP client, the LXC tests' container root, and the
# userland of the tiny test guest's initramfs (tests/guest/build.py; its kernel is
# fetched with apt-get download into .cache/guest/, not installed)
DEB_PACKAGES += busybox-static
# e2fsprogs: mke2fs -d makes the root image a test guest boots from a storage volume,
# debugfs reads it back (tests/integration/qemu/test_volume_disks.py)
DEB_PACKAGES += e2fsprogs
# qemu-guest-agent: Debian's qemu-ga, packed with its libraries into the tiny guest's
# agent variant (tests/guest/build.py ensure_agent_guest; tests/integration/qemu/test_guest_agent.py)
DEB_PACKAGES += qemu-guest-agent
# user-mode-linux: /usr/bin/linux.uml, the kernel the UML driver runs guests with
# (drivers/uml, tests/integration/uml); uml-utilities: uml_mconsole and tunctl, to look
# at a running guest by hand (the driver speaks the mconsole protocol itself)
DEB_PACKAGES += user-mode-linux uml-utilities
# debootstrap builds the lab VM's Debian image (tools/lab/build.py; tests/lab/)
DEB_PACKAGES += debootstrap
# remote access (tests/integration/auth): libkrb5-dev builds the gssapi module;
# a throw-away KDC (krb5-kdc, krb5-admin-server), kinit (krb5-user) and the
# SASL client plugins libvirt clients use (SCRAM, GSSAPI)
DEB_PACKAGES += libkrb5-dev krb5-kdc krb5-admin-server krb5-user \
                libsasl2-modules libsasl2-modules-gssapi-mit
# polkit tests: polkitd on a private system bus (dbus-daemon, dbus-send), in its
# own mount namespace (unshare, from util-linux)
DEB_PACKAGES += polkitd dbus-daemon dbus-bin util-linux
# mDNS test: two network namespaces joined by a veth pair
DEB_PACKAGES += iproute2
# virt-manager under Xvfb (tests/integration/qemu/test_virt_manager.py): its own dbus
# session, a screenshot with ImageMagick's import
DEB_PACKAGES += virt-manager xvfb imagemagick dbus-x11
# make bench's network section: the libvirtd it compares with writes its rules with iptables
DEB_PACKAGES += iptables
# emulated TPMs (<tpm><backend type='emulator'>, drivers/qemu/tpm.py): swtpm and
# swtpm_setup with its certificate authority (swtpm-tools)
DEB_PACKAGES += swtpm swtpm-tools
# ESX tests (tests/integration/esx): govmomi's vSphere simulator, whose sources Debian
# ships without a vcsim command; tests/vcsim/build.py builds one offline with Debian's Go
# into .cache/vcsim/
DEB_PACKAGES += golang-go golang-github-vmware-govmomi-dev

# A Python without its C headers (Debian's own python3) needs python3-dev to
# build libvirt-python; one without ensurepip needs python3-venv.
PY_HAS_HEADERS = $(shell $(PYTHON) -c 'import os, sysconfig; print(int(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))))' 2>/dev/null)
PY_HAS_ENSUREPIP = $(shell $(PYTHON) -c 'import ensurepip; print(1)' 2>/dev/null)

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: deps venv run test fuzz bench gen libvirt-api support-matrix clean

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES) \
	         $(if $(filter 1,$(PY_HAS_HEADERS)),,python3-dev) \
	         $(if $(filter 1,$(PY_HAS_ENSUREPIP)),,python3-venv); do \
	    dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -q && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.stamp

# deps is order-only: it must run first (libvirt-python compiles against
# libvirt-dev) but must not force a reinstall of the venv every time.
$(VENV)/.stamp: pyproject.toml setup.py | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: venv
	$(VENV)/bin/pyvirtd --root $(CURDIR)/.pyvirtd

# Bytecode is written (and reused) even where the environment says not to: each test
# starts hundreds of daemons, and recompiling the generated protocol module costs
# each one ~0.4 s.
test: deps venv
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python -m pytest -q --durations=20 $(PYTEST_ARGS)

# The fuzzers of tests/fuzz (mutated client frames against a real daemon, and the
# decoder in process) run a few hundred examples in `make test`; here many more,
# with fresh randomness each run (about 2 minutes at the default).
FUZZ_EXAMPLES ?= 2000
fuzz: deps venv
	PYVIRTD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest -q tests/fuzz

bench: deps venv
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/tls.py

gen: venv
	$(VENV)/bin/python tools/gen_protocol.py $(PROTOCOL_JSON) pyvirtd/rpc/_generated.py

# libvirt's public enums and function names (tools/libvirt_api.json, committed; `make gen`
# reads it): refresh from the installed libvirt-dev when moving to a new libvirt
libvirt-api:
	$(PYTHON) tools/gen_libvirt_api.py tools/libvirt_api.json

# docs/support-matrix.md: which driver answers which procedure, from the dispatch lookup
support-matrix: venv
	$(VENV)/bin/python tools/support_matrix.py docs/support-matrix.md

clean:
	rm -rf $(VENV) .pyvirtd build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
