# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, installs everything, builds the C extension, then runs.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EDGESEG := $(VENV)/bin/edgeseg
STAMP  := $(VENV)/.edgeseg-installed
DEMO   ?= runs/demo
SRC_C  := $(wildcard csrc/*.c csrc/*.h edgeseg/kernels/*.pyx)

.PHONY: all install build demo test test-python test-c asan bench clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned: anything else resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py | $(PY)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "torch==2.13.0"
	$(PIP) install "Cython>=3.0" "numpy>=1.24"
	$(PIP) install --no-build-isolation -e ".[train,export,dicom,dev]"
	touch $@

install: $(STAMP)

build: $(STAMP) $(SRC_C)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(EDGESEG) data synth --out $(DEMO)/phantom --cases 10 --seed 0
	$(EDGESEG) train --data $(DEMO)/phantom --out $(DEMO) --size 128 --base 16 --epochs 8 --batch-size 16 --seed 0
	$(EDGESEG) evaluate $(DEMO)/best.pt --data $(DEMO)/phantom --split test --out $(DEMO)/eval
	@echo "demo outputs: $(DEMO)/ (best.pt, metrics.csv, curves.png, eval/)"

test: build test-c test-python

# pytest exits 5 when it collects nothing; that is not a failure, every other code is.
test-python: build
	$(PY) -m pytest -q tests || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" || exit $$rc; }

test-c:
	@if [ -f csrc/tests/Makefile ]; then $(MAKE) -C csrc/tests run; fi

bench: build
	$(PY) -m pytest benchmarks --benchmark-only -q

clean:
	rm -rf build *.egg-info edgeseg/kernels/_kernels.c edgeseg/kernels/*.so
