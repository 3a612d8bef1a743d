# Two commands do everything on a fresh clone:  `make demo` (the main job) and `make test` (the tests).
# Each first makes the set-up it needs, once: a virtual environment in .venv with torch and the other
# dependencies, the Fashion-MNIST Debian package where apt can install it, and the compiled kernels
# (CPU always; CUDA too when nvcc and a CUDA build of torch are present; CBGAN_EXT_CUDA=0/1 forces it).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip on some machines lists every local index folder it skips: keep the log readable.
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEPS := $(VENV)/.deps
BUILT := $(VENV)/.built
KERNEL_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup test demo bench cmake-smoke data clean

setup: $(BUILT)

$(DEPS): requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip $(QUIET_PIP)
	$(VPY) -m pip install -q $(TORCH_PINS) $(QUIET_PIP)
	$(VPY) -m pip install -q -r requirements.txt $(QUIET_PIP)
	touch $@

$(BUILT): $(DEPS) $(KERNEL_SOURCES)
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e . $(QUIET_PIP)
	$(VPY) -c "import cbgan_ext; print('cbgan_ext build:', cbgan_ext.build_info())"
	touch $@

# Fashion-MNIST ships as a Debian package; elsewhere the data code downloads it when online.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist || true; \
	  elif command -v sudo >/dev/null; then sudo -n apt-get install -y -q dataset-fashion-mnist || true; fi; \
	fi

test: setup data
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q python_tests
	$(MAKE) --no-print-directory cmake-smoke

# The libtorch (CMake) build of the same sources, and its C++ smoke test.
cmake-smoke: $(DEPS)
	cmake -S . -B cmake-build -DTORCH_ROOT="$$($(VPY) -c 'import torch, os; print(os.path.dirname(torch.__file__))')" >/dev/null
	cmake --build cmake-build -j2
	./cmake-build/cbgan_ext_smoke

demo: setup data
	$(VPY) -m cbgan_ext.cli demo

bench: setup
	cd benchmarks && ../$(VPY) summarize.py

clean:
	rm -rf build cmake-build *.egg-info cbgan_ext/*.so
