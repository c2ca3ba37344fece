# mopt: the two commands of the README set everything up on a fresh machine.
#   make demo   installs what it needs, builds, runs the main job on the embedded default
#   make test   installs, builds, runs every C++ and Python test
# Both are idempotent. torch is pinned to $(TORCH_VERSION) and installed before anything else so
# pip never resolves a torch of its own.

PY ?= python3
TORCH_VERSION := 2.13.0
BUILD ?= build
JOBS ?= $(shell nproc)
APT_PACKAGES := libgtest-dev libfmt-dev nlohmann-json3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTHONPATH_DEV := $(CURDIR)/python
export PYTHONPATH := $(PYTHONPATH_DEV)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all deps deps-apt deps-python deps-bench build test test-cpp test-python demo bench install-check clean

all: build

deps: deps-apt deps-python

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

deps-python:
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null \
	  || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	@$(PY) -m pip install -q -c constraints.txt -r requirements.txt

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOPT_PYTHON_INPLACE=ON \
	  -DPython3_EXECUTABLE=$$(command -v $(PY))

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(PY) -m pytest -q tests/python

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-python: build
	$(PY) -m pytest -q tests/python

demo: build
	$(PY) -m mopt ptq --model default --configs all --out out/demo

# nvidia-modelopt (pure Python) is what compare_modelopt.py measures against; constraints.txt
# keeps it from resolving another torch. If it does not install, the script says why.
deps-bench: deps
	@$(PY) -c "import modelopt" 2>/dev/null || $(PY) -m pip install -q -c constraints.txt nvidia-modelopt \
	  || echo "nvidia-modelopt did not install; compare_modelopt.py will report it"

bench: build deps-bench
	$(PY) benchmarks/bench_fake_quant.py
	$(PY) benchmarks/compare_modelopt.py --configs all

clean:
	rm -rf $(BUILD) python/mopt/_C*.so python/mopt/libmopt.so*
