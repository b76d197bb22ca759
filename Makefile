# cove: `make demo` and `make test` work on a fresh Debian machine as root.
SHELL := /bin/bash
# Debian's own Python (apt's python3): a venv on it is visible inside light-mode
# containers, which see the host tree but a private /root (where pyenv lives).
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables util-linux procps etcd-server etcd-client dnsutils dnsperf \
	dnsmasq-base iperf3 containernetworking-plugins curl openssl passwd python3 python3-venv \
	libseccomp2 gcc libc6-dev busybox-static iputils-ping podman runc \
	chromium tini skopeo docker-registry
STAMP := $(VENV)/.installed

.PHONY: install deps demo test unit lint bench clean

install: deps $(STAMP)

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) demo/demo.py

# Two workers, a test module each at a time: most tests wait on agents and
# kernels rather than compute. A short --basetemp keeps the Unix sockets
# under test directories within their 108-byte limit.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --basetemp=/var/lib/cove-tests/run tests

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: install
	$(VENV)/bin/ruff check src tests bench demo
	$(VENV)/bin/ruff format --check src tests bench demo
	$(VENV)/bin/mypy --strict src

bench: install
	for b in bench/*/run.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
