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

.PHONY: all install build demo demo-chest test test-python test-c test-c-aarch64 test-layers asan bench bench-kernels clean sdk

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned: anything else resolves to a multi-GB CUDA build.
# csrc/edgeseg.h holds the version (setup.py reads it into the metadata and edgeseg/_version.py).
$(STAMP): pyproject.toml setup.py csrc/edgeseg.h | $(PY)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "torch==2.13.0"
	$(PIP) install "Cython>=3.0" "numpy>=1.24"
	$(PIP) install --no-build-isolation -e ".[io,train,export,dicom,serve,grpc,dev,openvino]"
	# only its tritonserver binary is used (the Triton tests); its metadata pins numpy<2
	$(PIP) install --no-deps "nvidia-pytriton>=0.5"
	touch $@

install: $(STAMP)

build: $(STAMP) $(SRC_C)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(EDGESEG) data synth --out $(DEMO)/phantom --cases 12 --seed 0
	$(EDGESEG) train --data $(DEMO)/phantom --out $(DEMO) --size 128 --base 16 --epochs 12 --batch-size 8 --lr 3e-3 --seed 0 --overwrite
	$(EDGESEG) evaluate $(DEMO)/best.pt --data $(DEMO)/phantom --split test --out $(DEMO)/eval
	$(EDGESEG) export $(DEMO)/best.pt --out $(DEMO)/bundle --int8 --calib $(DEMO)/phantom --overwrite
	@# case_008 is one of the split's test cases (runs/demo/split.json), unseen in training
	$(EDGESEG) predict $(DEMO)/bundle $(DEMO)/phantom/imagesTr/case_008.nii.gz --out $(DEMO)/predict/case_008.nii.gz --overlay $(DEMO)/predict/case_008.png
	$(EDGESEG) bench $(DEMO)/bundle --size 256 --batch 1,8 --runs 10 --warmup 2 --json $(DEMO)/bench.json --png $(DEMO)/bench.png
	@echo "demo outputs: $(DEMO)/ (best.pt, metrics.csv, curves.png, eval/, bundle/, predict/, bench.json, bench.png)"

# The second task on the chest phantom: two lesion classes (ground-glass, consolidation), a
# class-weighted loss, per-class evaluation, an INT8 bundle gated per class, a label-map NIfTI,
# and the same case written as a DICOM CT series segmented into a two-segment DICOM SEG
# (checked by dciodvfy where dicom3tools is installed).
CHEST ?= runs/demo-chest
CHEST_SEG := $(CHEST)/predict/case_008.seg.dcm
demo-chest: build
	$(EDGESEG) data synth --kind chest --out $(CHEST)/phantom --cases 12 --seed 0 --quiet
	$(EDGESEG) train --data $(CHEST)/phantom --out $(CHEST) --labels ggo=1,consolidation=2 --window=-1000,200 --size 128 --base 16 --epochs 16 --batch-size 8 --lr 3e-3 --loss dice-ce --class-weights 0.5,1,2 --seed 0 --overwrite
	$(EDGESEG) evaluate $(CHEST)/best.pt --data $(CHEST)/phantom --split test --out $(CHEST)/eval
	$(EDGESEG) export $(CHEST)/best.pt --out $(CHEST)/bundle --int8 --calib $(CHEST)/phantom --overwrite
	$(EDGESEG) predict $(CHEST)/bundle $(CHEST)/phantom/imagesTr/case_008.nii.gz --out $(CHEST)/predict/case_008.nii.gz --overlay $(CHEST)/predict/case_008.png
	@# the same phantom cases (seed 0) as DICOM CT series, one folder per case; case_008 to a DICOM SEG
	$(EDGESEG) data synth --kind chest --format dicom --out $(CHEST)/phantom-dicom --cases 9 --seed 0 --quiet
	$(EDGESEG) predict $(CHEST)/bundle $(CHEST)/phantom-dicom/case_008 --format dicom-seg --out $(CHEST_SEG)
	@if command -v dciodvfy >/dev/null 2>&1; then \
		dciodvfy $(CHEST_SEG) > $(CHEST_SEG).dciodvfy.txt 2>&1; \
		if grep -q '^Error' $(CHEST_SEG).dciodvfy.txt; then cat $(CHEST_SEG).dciodvfy.txt; exit 1; fi; \
		echo "dciodvfy: no errors in $(CHEST_SEG)"; \
	else echo "dciodvfy not installed (Debian package dicom3tools): $(CHEST_SEG) not validated"; fi
	@echo "chest demo outputs: $(CHEST)/ (best.pt, metrics.csv, curves.png, eval/, bundle/, phantom-dicom/, predict/)"

# The sanitizer run is part of the suite: a memory error in the kernels fails CI.
test: build test-layers test-c test-python asan

# pytest exits 5 when it collects nothing; that is not a failure, every other code is.
# One worker per core (at most PYTEST_WORKERS); a test file runs in one worker, so its
# module fixtures are built once. Files go out in collection order, which puts the long ones
# first (tests/conftest.py). PYTEST_WORKERS=0 runs everything in this process.
# A worker that dies (a crash in native code) stops the run with its test named: a replaced
# worker could leave the session waiting for work that never comes.
PYTEST_WORKERS ?= 4
test-python: build
	$(PY) -m pytest -q --durations=15 $(if $(filter 0,$(PYTEST_WORKERS)),,-n auto --maxprocesses=$(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0) tests || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" || exit $$rc; }

# The import contracts in pyproject.toml: the layers, and no torch on the runtime side.
test-layers: build
	$(VENV)/bin/lint-imports

# The C test twice: as built here (SSE2, AVX2 clones) and portable (-DES_NO_SIMD -funsigned-char).
test-c:
	$(MAKE) -C csrc/tests run portable

# The C test cross-built for aarch64 and run under qemu-user; `make test` runs it through
# tests/kernels/test_aarch64.py where the cross toolchain works.
test-c-aarch64:
	$(MAKE) -C csrc/tests aarch64

# libedgeseg (the C API) with headers, pkg-config and CMake package files in build/sdk/; the
# tests in tests/capi build their own copy (and an ASan/UBSan one) the same way.
sdk: $(STAMP)
	$(MAKE) -C csrc/sdk PY=$(abspath $(PY))

# address + undefined-behaviour sanitizers over the C test and the Python parity suite.
asan: build
	$(MAKE) -C csrc/tests asan
	csrc/tests/asan_python.sh $(abspath $(PY))

bench: build
	$(PY) -m pytest benchmarks --benchmark-only -q

# One table of kernel timings and ratios against numpy, OpenCV and torch.
bench-kernels: build
	$(PY) -m edgeseg.bench.kernels

# The declared lower bounds (constraints/floor.txt, the floors of pyproject.toml) installed
# together in a venv of their own, and the tests of the libraries they pin; not part of
# `make test`. The extension is built against the floor numpy in a copy of the tracked files
# (built in place here it would replace .venv's). FLOOR_TESTS narrows it to a directory.
# tests/capi: libedgeseg needs OpenVINO's C library from 2026.0 (docs/c-api.md), which the Python
# floor's 2024.0 wheel does not ship; those tests run with that floor, FLOOR_CAPI_OPENVINO,
# installed apart and put first on PYTHONPATH; the venv keeps 2024.0 for the other folders.
FLOOR_VENV  ?= $(abspath build/floor-venv)
FLOOR_SRC   := build/floor-src
FLOOR_TESTS ?= tests/test_floor_constraints.py tests/runtime tests/readers tests/serve tests/export tests/kernels tests/capi tests/cli \
	tests/test_metrics.py tests/test_metrics_hd95.py tests/test_metrics_pooled.py tests/test_surface_distance.py
FLOOR_CAPI_OPENVINO := 2026.0.0
FLOOR_CAPI_OV ?= $(abspath build/floor-openvino-c)
.PHONY: test-floor
test-floor:
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install "torch==2.13.0"
	# -U: a new venv's own setuptools (65 on Python 3.11) cannot read project.license, and
	# --no-build-isolation below builds with it; [build-system] asks for setuptools>=77.
	$(FLOOR_VENV)/bin/pip install -U -c constraints/floor.txt "setuptools>=77" wheel "Cython>=3.0" numpy
	rm -rf $(FLOOR_SRC) && mkdir -p $(FLOOR_SRC)
	bash -o pipefail -c 'git ls-files -z | tar --null -T - -cf - | tar -xf - -C $(FLOOR_SRC)'
	cd $(FLOOR_SRC) && $(FLOOR_VENV)/bin/pip install -c $(abspath constraints/floor.txt) --no-build-isolation \
		-e ".[io,train,export,dicom,serve,openvino,triton,dev]" && $(FLOOR_VENV)/bin/python setup.py -q build_ext --inplace
	# the tritonserver binary for the Triton tests of tests/serve (the tritonclient floor against a
	# real server), as `make install` takes it: without dependencies, the floors stay as they are
	$(FLOOR_VENV)/bin/pip install --no-deps "nvidia-pytriton>=0.5"
	$(if $(filter tests/capi%,$(FLOOR_TESTS)),rm -rf $(FLOOR_CAPI_OV) && $(FLOOR_VENV)/bin/pip install --no-deps \
		--target $(FLOOR_CAPI_OV) "openvino==$(FLOOR_CAPI_OPENVINO)")
	cd $(FLOOR_SRC) && { rc=0; for t in $(FLOOR_TESTS); do case $$t in tests/capi*) ov=$(FLOOR_CAPI_OV);; *) ov=;; esac; \
		OMP_NUM_THREADS=1 PYTHONPATH=$$ov $(FLOOR_VENV)/bin/python -m pytest -q $$t || rc=1; done; exit $$rc; }

clean:
	rm -rf build *.egg-info edgeseg/kernels/_kernels.c edgeseg/kernels/*.so
