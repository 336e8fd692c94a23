# pycrio — one-command setup for a Debian 12 host, as root.
#   make run    install what is missing and start the daemon on its embedded defaults
#   make test   install what is missing (test needs too) and run ruff, mypy --strict and pytest

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip

# What the daemon runs on the host.
RUN_DEBS    := runc crun conmon catatonit containernetworking-plugins iptables iproute2 \
               ca-certificates util-linux mount kmod procps
# What the tests and benchmarks use on top: a real registry, test images from busybox-static,
# TLS/htpasswd for the registry tests, containerd as the benchmarks' reference.
TEST_DEBS   := docker-registry busybox-static openssl apache2-utils containerd

PYTEST_ARGS ?=

.PHONY: run test deps test-deps venv lint typecheck unit proto check-proto clean cni-default

# Install only the Debian packages that are missing (dpkg -s is fast; apt-get only when needed).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(RUN_DEBS) python3-venv)

test-deps: deps
	$(call apt_install,$(TEST_DEBS))

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip >/dev/null
	$(PIP) install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# Default CNI network (bridge pycrio0 + host-local + portmap + loopback) when none is configured.
cni-default: venv
	@$(PY) -m pycrio.cli.daemon install-cni-default

run: deps venv cni-default
	$(VENV)/bin/pycrio $(ARGS)

proto: venv
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. pycrio/api/api.proto

lint: venv
	$(VENV)/bin/ruff check pycrio tests bench

typecheck: venv
	$(VENV)/bin/mypy --strict pycrio

test: test-deps venv
	$(VENV)/bin/ruff check pycrio tests bench
	$(VENV)/bin/mypy --strict pycrio
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
