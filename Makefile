# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv with the pinned versions of requirements.lock and install the Debian
# packages r2b's tests and tools need when they are missing (apt-get; run as root).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# command:package pairs for the Debian tools r2b and its tests call
DEB_TOOLS := mke2fs:e2fsprogs debugfs:e2fsprogs sgdisk:gdisk mkfs.vfat:dosfstools mcopy:mtools \
	wimapply:wimtools mkntfs:ntfs-3g restic:restic qemu-img:qemu-utils fsfreeze:util-linux \
	losetup:mount

.PHONY: all demo test lint typecheck unit sysdeps venv bench clean

all: test

sysdeps:
	@missing=""; for pair in $(DEB_TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	test -x /usr/lib/postgresql/15/bin/initdb || missing="$$missing postgresql-15"; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy $(wildcard r2b catalog cli flows tasks blocks bench)

test: sysdeps venv lint
	PATH="$$PATH:/usr/sbin:/sbin" $(BIN)/pytest -q

demo: sysdeps venv
	PATH="$$PATH:/usr/sbin:/sbin" $(BIN)/r2b demo

bench: sysdeps venv
	for b in replicate blocksize backup catalog freeze; do \
	  PATH="$$PATH:/usr/sbin:/sbin" $(BIN)/python -m bench.$$b --dir /var/tmp || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
