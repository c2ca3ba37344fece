# mopt: the two commands of the README set everything up on a fresh machine.
#   make demo   installs what it needs, builds, runs the main job on the embedded default
#   make test   installs, builds, runs every C++ and Python test
# Both are idempotent. torch is pinned to $(TORCH_VERSION) and installed before anything else so
# pip never resolves a torch of its own. `make demo` builds only libmopt and mopt._C; the test
# binaries and the kernel benchmark are built by `make test` (or `make build`).
#   make test-sanitize   the C++ tests built with ASan + UBSan in $(BUILD_SANITIZE) (.ci/run)
#   make gpu-check   on a machine with an NVIDIA GPU: CUDA build, CUDA tests, GPU benchmarks
#                    (tools/gpu_check.sh; needs no network)

PY ?= python3
TORCH_VERSION := 2.13.0
BUILD ?= build
JOBS ?= $(shell nproc)
APT_PACKAGES := libgtest-dev libfmt-dev nlohmann-json3-dev ccache dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTHONPATH_DEV := $(CURDIR)/python
export PYTHONPATH := $(PYTHONPATH_DEV)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Every compile goes through ccache when it is installed (deps-apt installs it), in its default
# cache folder so the cache outlives a clone (`ccache -s` shows the hits). Sources built with a
# precompiled header hit only with pch_defines and time_macros; include_file_mtime/ctime keep the
# direct mode for them although the .gch is written moments before they compile. base_dir lets
# two clones of the repository share entries.
export CCACHE_SLOPPINESS ?= pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR ?= $(CURDIR)

.PHONY: all deps deps-apt deps-python deps-bench build build-demo test test-cpp test-python demo bench \
	install-check gpu-check gpu-check-debs clean test-sanitize deps-peers

all: build

deps: deps-apt deps-python

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# llama-cpp-python (requirements.txt) builds llama.cpp from source: CPU only, portable, no tools.
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF

deps-python:
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null \
	  || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	@CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PY) -m pip install -q -c constraints.txt -r requirements.txt

# ccache is looked up when the recipe runs, after deps-apt may have installed it; an empty
# launcher clears one that a build folder configured earlier remembers. Without nvcc the CUDA
# launcher is unused, which -Wno-unused-cli keeps quiet.
$(BUILD)/build.ninja: CMakeLists.txt Makefile | deps
	cmake -S . -B $(BUILD) -G Ninja -Wno-unused-cli -DCMAKE_BUILD_TYPE=Release \
	  -DMOPT_PYTHON_INPLACE=ON -DPython3_EXECUTABLE=$$(command -v $(PY)) \
	  -DCMAKE_CXX_COMPILER_LAUNCHER=$$(command -v ccache) \
	  -DCMAKE_CUDA_COMPILER_LAUNCHER=$$(command -v ccache)
	@touch $@

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# What the demo runs: libmopt and mopt._C (copied into python/mopt), no tests, no benchmark.
build-demo: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS) --target mopt mopt_python

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(PY) -m pytest -q tests/python

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-python: build
	$(PY) -m pytest -q tests/python

# The C++ tests (kernel and library GoogleTests, config fuzz included) under AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake option MOPT_SANITIZE), in their own build folder: no Python
# extension (a sanitized module would need the ASan runtime preloaded into python and torch),
# nothing copied into python/mopt, no CUDA (the CUDA kernels run under compute-sanitizer in
# `make gpu-check`). -O1 -g1 keeps the build and the run fast with readable stacks. Any report
# fails the test: halt_on_error, and UBSan does not recover. Leaks are checked too; libtorch,
# loaded into the test binaries, reports none, so no suppression file is needed. ccache leaves
# the build folder out of its hash (CCACHE_NOHASHDIR), which it otherwise adds for -g: a fresh
# clone then hits the cache too, at the price of a stale folder name in the debug info only.
BUILD_SANITIZE ?= build-sanitize
ASAN_CHECKS := halt_on_error=1:detect_leaks=1:strict_string_checks=1
ASAN_CHECKS := $(ASAN_CHECKS):detect_stack_use_after_return=1:check_initialization_order=1
SANITIZE_ENV := ASAN_OPTIONS=$(ASAN_CHECKS) UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
$(BUILD_SANITIZE)/build.ninja: CMakeLists.txt Makefile | deps
	cmake -S . -B $(BUILD_SANITIZE) -G Ninja -Wno-unused-cli -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DMOPT_SANITIZE=ON -DMOPT_BUILD_PYTHON=OFF \
	  -DMOPT_PYTHON_INPLACE=OFF -DMOPT_ENABLE_CUDA=OFF -DPython3_EXECUTABLE=$$(command -v $(PY)) \
	  -DCMAKE_CXX_COMPILER_LAUNCHER=$$(command -v ccache)
	@touch $@

test-sanitize: deps $(BUILD_SANITIZE)/build.ninja
	CCACHE_NOHASHDIR=1 cmake --build $(BUILD_SANITIZE) -j $(JOBS) \
	  --target mopt_kernel_tests mopt_lib_tests
	cd $(BUILD_SANITIZE) && $(SANITIZE_ENV) ctest --output-on-failure -j $(JOBS)

demo: build-demo
	$(PY) -m mopt ptq --model default --configs all --out out/demo --overwrite
	$(PY) -m mopt sparsify --model default --out out/demo_sparsify --overwrite
	$(PY) -m mopt qat --model default --config int4_b32 --steps 30 --no-qad \
	  --out out/demo_qat --overwrite
	$(PY) -m mopt cache --model default --samples 8 --calib-seeds 1 --orders 1 \
	  --families interval --block none --out out/demo_cache --overwrite

# nvidia-modelopt (pure Python) is what compare_modelopt.py measures against; constraints.txt
# keeps it from resolving another torch. If it does not install, the script says why.
deps-bench: deps
	@$(PY) -c "import modelopt" 2>/dev/null || $(PY) -m pip install -q -c constraints.txt nvidia-modelopt \
	  || echo "nvidia-modelopt did not install; compare_modelopt.py will report it"

# llm-compressor and torchao, what compare_peers.py measures against, pin their own transformers
# and friends, so they live in a virtual environment of their own: it sees the system torch and
# (PYTHONPATH, exported above) this checkout's mopt, and constraints.txt keeps pip from resolving
# another torch. Each peer installs on its own; one that does not gets error rows in the table.
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_PACKAGES := llmcompressor==0.14.* torchao==0.18.*
deps-peers: deps
	@[ -x $(PEERS_PY) ] || $(PY) -m venv --system-site-packages $(PEERS_VENV)
	@for p in $(PEERS_PACKAGES); do name=$${p%%=*}; \
	  $(PEERS_PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('$$name') is None)" \
	  || $(PEERS_PY) -m pip install -q -c constraints.txt "$$p" \
	  || echo "$$p did not install; compare_peers.py reports its rows as errors"; \
	done
	@$(PEERS_PY) -c "import sys, torch; v = torch.__version__; \
	  sys.exit(0 if v.split('+')[0] == '$(TORCH_VERSION)' else f'$(PEERS_VENV) has torch {v}')"

bench: build deps-bench deps-peers
	$(PY) benchmarks/bench_fake_quant.py
	$(PY) benchmarks/compare_modelopt.py --configs all
	$(PEERS_PY) benchmarks/compare_peers.py --model default --out out/peers_default

# Prepared for a machine with an NVIDIA GPU and no network (docs: tools/gpu_check.sh): builds
# the CUDA glue against the torch it finds in $(BUILD_GPU), runs the CUDA tests (also under
# compute-sanitizer), the CUDA pytest cases, the GPU benchmark sections and the demo on CUDA,
# and writes every log and table to $(GPU_CHECK_OUT). It installs nothing from the network.
BUILD_GPU ?= build-gpu
GPU_CHECK_OUT ?= out/gpu-check
gpu-check:
	PY=$(PY) BUILD_GPU=$(BUILD_GPU) GPU_CHECK_OUT=$(GPU_CHECK_OUT) tools/gpu_check.sh

# Here, with network: the Debian -dev packages as .deb files, for a GPU machine without them
# (carry .gpu-check-debs there; tools/gpu_check.sh unpacks them into its build folder).
gpu-check-debs:
	mkdir -p .gpu-check-debs && cd .gpu-check-debs && apt-get download \
	  libgtest-dev libfmt-dev libfmt9 nlohmann-json3-dev

clean:
	rm -rf $(BUILD) $(BUILD_SANITIZE) python/mopt/_C*.so python/mopt/libmopt.so*
