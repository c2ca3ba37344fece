#!/usr/bin/env bash
# make gpu-check: the prepared GPU check, one command on a machine with an NVIDIA GPU and a
# CUDA-enabled torch, without network. Steps, each bounded by `timeout` and by one overall budget
# (GPU_CHECK_BUDGET seconds: 450 with a GPU, so the whole run stays under 8 minutes on an H200;
# 3600 without one, where the build step may take GPU_CHECK_BUILD_TIMEOUT = 3000 s instead of 330):
#
#   env          machine, GPU, driver, nvcc, torch, compute-sanitizer        -> env.txt
#   deps         torch importable (never pip-installed here), the Debian -dev packages present;
#                missing ones are unpacked from carried .deb files (GPU_CHECK_DEBS, default
#                .gpu-check-debs, filled by `make gpu-check-debs` where there is network), or
#                apt-get is tried once (fails fast without network)              -> build.log
#   configure    cmake into BUILD_GPU (default build-gpu) against that torch, CUDA archs of the
#                GPU found; fails if a GPU and a CUDA torch are present but the CUDA op
#                registrations (MOPT_CUDA_OPS) are off                           -> build.log
#   build        everything (library, extension copied into python/mopt, tests, kernel bench),
#                ninja -k 0 so one broken target does not hide the rest          -> build.log
#   ctest-cuda   the CUDA GoogleTests (ctest -R Cuda: mopt_kernel_cuda_tests and the Cuda cases
#                of mopt_lib_tests)                                              -> ctest_cuda.log
#   pytest-cuda  the CUDA pytest cases (pytest -k cuda)                         -> pytest_cuda.log
#   bench-*      the GPU sections of bench_fake_quant.py, bench_block_formats.py and
#                bench_sparse_gemm.py (2:4 GEMM vs dense, torch semi-structured) (--no-cpu)
#                                                                                 -> bench_gpu.md
#   ptq-cuda     the make-demo job on the GPU (mopt ptq --device cuda)     -> ptq_cuda.log (+ dir)
#   sanitizer-*  the CUDA C++ tests under compute-sanitizer memcheck and racecheck, last, since
#                the budget cuts what comes last                                  -> sanitizer.log
#
# summary.txt lists each step as PASS, FAIL or SKIP with its time and why. Exit status: 1 if a
# step FAILed, else 0; steps that cannot run here (no GPU, no compute-sanitizer, budget spent)
# are SKIPs, not failures. Without a GPU (a dry run on a CPU machine) it says so, still
# configures and builds, runs the CUDA tests (they skip) and the benchmark scripts (they print
# that the GPU section is skipped), and skips the rest.
#
# On the lent device machine (tool `run`; files come back from $OUT, at most 8):
#   GPU_CHECK_OUT=/tmp/gpu-check GPU_CHECK_TAR=$OUT/gpu-check.tar.gz make gpu-check
# with carry [".gpu-check-debs"] if that image lacks libgtest-dev, libfmt-dev or
# nlohmann-json3-dev. Other knobs: PY, BUILD_GPU, JOBS, GPU_CHECK_CUDA_ARCHS (e.g. 90).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PY:-python3}
BUILD_GPU=${BUILD_GPU:-build-gpu}
OUT_DIR=${GPU_CHECK_OUT:-out/gpu-check}
JOBS=${JOBS:-$(nproc)}
DEBS=${GPU_CHECK_DEBS:-.gpu-check-debs}
TAR=${GPU_CHECK_TAR:-}

export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT}

mkdir -p "$OUT_DIR" "$BUILD_GPU"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
BUILD_GPU=$(cd "$BUILD_GPU" && pwd)
# Only what this script writes is replaced: the folder may be shared with other files.
rm -rf "$OUT_DIR"/{env.txt,build.log,ctest_cuda.log,pytest_cuda.log,bench_gpu.md,ptq_cuda.log} \
  "$OUT_DIR"/{sanitizer.log,summary.txt,ptq_cuda}

START=$(date +%s)
DEADLINE=$((START + 3600)) # until the GPU is looked for
SUMMARY=()
FAILED=0

say() { printf '%s\n' "$*"; }
elapsed() { echo $(($(date +%s) - START)); }

# record STEP STATUS SECONDS NOTE LOG
record() {
  SUMMARY+=("$(printf '%-30s %-4s %5ss  %-16s %s' "$1" "$2" "$3" "${5:--}" "$4")")
  [ "$2" = FAIL ] && FAILED=1
  say "   -> $2 ($3 s) $4"
}

# run_step STEP CAP LOG CMD...: CMD under `timeout` (CAP, or what is left of the budget, if
# less), its output appended to LOG. Sets STEP_RC (124 on timeout) and records PASS or FAIL,
# unless NO_RECORD=1 (the caller decides).
run_step() {
  local step=$1 cap=$2 log=$3
  shift 3
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  STEP_RC=125
  if ((limit < 15)); then
    record "$step" SKIP 0 "the ${BUDGET} s budget is spent" "$log"
    return 0
  fi
  say "== [$(elapsed) s] $step (limit ${limit} s): $*"
  printf '\n== %s: %s\n' "$step" "$*" >>"$OUT_DIR/$log"
  local t0
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$OUT_DIR/$log" 2>&1
  STEP_RC=$?
  STEP_SECONDS=$(($(date +%s) - t0))
  [ "${NO_RECORD:-0}" = 1 ] && return 0
  if ((STEP_RC == 0)); then
    record "$step" PASS "$STEP_SECONDS" "${STEP_NOTE:-}" "$log"
  else
    local why="exit $STEP_RC"
    ((STEP_RC == 124 || STEP_RC == 137)) && why="timed out after ${limit} s"
    record "$step" FAIL "$STEP_SECONDS" "$why${STEP_NOTE:+; $STEP_NOTE}" "$log"
    say "   last lines of $log:"
    tail -n 15 "$OUT_DIR/$log" | sed 's/^/   | /'
  fi
}

# ---------------------------------------------------------------------------------------------
say "== [0 s] env -> $OUT_DIR/env.txt"
GPU_NAME=""
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
fi
TORCH_INFO=$(timeout 120 "$PY" -c "import torch; print(torch.__version__, torch.version.cuda or 'none', int(torch.cuda.is_available()))" 2>/dev/null)
TORCH_OK=$?
read -r TORCH_VERSION TORCH_CUDA TORCH_SEES_GPU <<<"${TORCH_INFO:-none none 0}"
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ] && [ -n "$NVCC" ]; then
  for d in "$(dirname "$(readlink -f "$NVCC")")" /usr/local/cuda/bin; do
    [ -x "$d/compute-sanitizer" ] && SANITIZER=$d/compute-sanitizer && break
  done
fi
HAVE_GPU=0
[ "$TORCH_SEES_GPU" = 1 ] && HAVE_GPU=1
{
  say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  say "commit: $(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git)')"
  say "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  say "python: $(command -v "$PY") ($("$PY" -V 2>&1))"
  say "torch: $TORCH_VERSION, CUDA ${TORCH_CUDA}, torch.cuda.is_available() = $TORCH_SEES_GPU"
  say "gpu: ${GPU_NAME:-none found (nvidia-smi missing or lists none)}"
  say "nvcc: ${NVCC:-none} $([ -n "$NVCC" ] && "$NVCC" --version | tail -n 2 | head -n 1)"
  say "compute-sanitizer: ${SANITIZER:-none}"
  say "cmake: $(cmake --version 2>/dev/null | head -n 1)"
  say "ccache: $(command -v ccache || echo none)"
  if [ -n "$GPU_NAME" ]; then
    say ""
    timeout 30 nvidia-smi 2>&1
  fi
} >"$OUT_DIR/env.txt" 2>&1
sed 's/^/   /' "$OUT_DIR/env.txt" | head -n 10

# The 8-minute bound is for a GPU machine (16 cores); a dry run on a small CPU machine gets time
# to build, since a slow build there is no failure.
if ((HAVE_GPU)); then
  BUDGET=${GPU_CHECK_BUDGET:-450}
  BUILD_CAP=${GPU_CHECK_BUILD_TIMEOUT:-330}
else
  BUDGET=${GPU_CHECK_BUDGET:-3600}
  BUILD_CAP=${GPU_CHECK_BUILD_TIMEOUT:-3000}
fi
DEADLINE=$((START + BUDGET))
if ((HAVE_GPU)); then
  say "   GPU: $GPU_NAME (torch $TORCH_VERSION, CUDA $TORCH_CUDA)"
else
  say ""
  say "   NO GPU: torch.cuda.is_available() is False here (gpu: ${GPU_NAME:-none}; torch's CUDA:"
  say "   $TORCH_CUDA). This is a dry run: it configures and builds, runs the CUDA tests (they"
  say "   skip) and the benchmark scripts (no GPU section), and skips the steps that need a GPU."
  say ""
fi

# ---------------------------------------------------------------------------------------------
# deps: nothing from the network unless something is missing.
say "== [$(elapsed) s] deps"
t0=$(date +%s)
DEPS_NOTE=""
DEPS_STATUS=PASS
EXTRA_PREFIX=""
if ((TORCH_OK != 0)); then
  DEPS_STATUS=FAIL
  DEPS_NOTE="'import torch' fails with $PY: install torch first (make deps-python, with network)"
fi
if ((TORCH_OK == 0)) && [ -n "$GPU_NAME" ] && [ "$TORCH_SEES_GPU" != 1 ]; then
  DEPS_STATUS=FAIL
  DEPS_NOTE="a GPU ($GPU_NAME) is here, but torch $TORCH_VERSION (CUDA $TORCH_CUDA) cannot use it"
fi
# CMakeLists.txt finds Python3 Development.Module: the interpreter's headers.
py_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])" 2>/dev/null)
if [ ! -e "$py_include/Python.h" ]; then
  DEPS_STATUS=FAIL
  DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }no Python.h in ${py_include:-?} (the python3-dev package): configure will fail"
fi
missing_py=""
for m in pytest numpy; do
  "$PY" -c "import $m" 2>/dev/null || missing_py="$missing_py $m"
done
[ -n "$missing_py" ] && DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }Python modules missing:$missing_py"

# header -> Debian package, for what CMakeLists.txt finds (GTest, fmt, nlohmann_json).
missing_deb=""
for pair in gtest/gtest.h:libgtest-dev fmt/core.h:libfmt-dev nlohmann/json.hpp:nlohmann-json3-dev; do
  [ -e "/usr/include/${pair%%:*}" ] || [ -e "/usr/local/include/${pair%%:*}" ] \
    || missing_deb="$missing_deb ${pair##*:}"
done
if [ -n "$missing_deb" ]; then
  debs=$(ls "$DEBS"/*.deb 2>/dev/null)
  if [ -n "$debs" ]; then
    # Unpacked into the build folder, not /: nothing on the machine is replaced.
    EXTRA_PREFIX="$BUILD_GPU/_deps_root/usr"
    for f in $debs; do dpkg-deb -x "$f" "$BUILD_GPU/_deps_root" >>"$OUT_DIR/build.log" 2>&1; done
    DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }unpacked $(echo "$debs" | wc -w) carried .deb files for:$missing_deb"
  elif command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    say "   Debian packages missing:$missing_deb; trying apt-get (needs network)"
    if timeout 60 $sudo apt-get update -qq >>"$OUT_DIR/build.log" 2>&1 &&
      timeout 120 $sudo apt-get install -y -qq $missing_deb >>"$OUT_DIR/build.log" 2>&1; then
      DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }apt-get installed:$missing_deb"
    else
      DEPS_STATUS=FAIL
      DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }missing:$missing_deb (no network for apt-get; carry them: make gpu-check-debs)"
    fi
  else
    DEPS_STATUS=FAIL
    DEPS_NOTE="${DEPS_NOTE:+$DEPS_NOTE; }missing:$missing_deb (carry them: make gpu-check-debs)"
  fi
fi
record deps "$DEPS_STATUS" $(($(date +%s) - t0)) "${DEPS_NOTE:-torch, pytest, numpy and the -dev packages present}" build.log

# ---------------------------------------------------------------------------------------------
BUILT=0
if ((TORCH_OK == 0)); then
  ARCHS=${GPU_CHECK_CUDA_ARCHS:-}
  if [ -z "$ARCHS" ] && [ -n "$GPU_NAME" ]; then
    ARCHS=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
      head -n 1 | tr -d ' .')
  fi
  # torch's CMake package compiles for TORCH_CUDA_ARCH_LIST, else probes the GPU.
  if [[ $ARCHS =~ ^[0-9]+$ ]] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    export TORCH_CUDA_ARCH_LIST="${ARCHS%?}.${ARCHS: -1}"
  fi
  launcher=$(command -v ccache || true)
  cmake_args=(-S "$ROOT" -B "$BUILD_GPU" -G Ninja -Wno-unused-cli -DCMAKE_BUILD_TYPE=Release
    -DMOPT_PYTHON_INPLACE=ON "-DPython3_EXECUTABLE=$(command -v "$PY")"
    "-DCMAKE_CXX_COMPILER_LAUNCHER=$launcher" "-DCMAKE_CUDA_COMPILER_LAUNCHER=$launcher")
  [ -n "$ARCHS" ] && cmake_args+=("-DCMAKE_CUDA_ARCHITECTURES=$ARCHS")
  [ -n "$EXTRA_PREFIX" ] && cmake_args+=("-DCMAKE_PREFIX_PATH=$EXTRA_PREFIX")
  [ -n "$NVCC" ] && [ -z "$(command -v nvcc)" ] && cmake_args+=("-DCMAKE_CUDA_COMPILER=$NVCC")

  NO_RECORD=1 run_step configure 240 build.log cmake "${cmake_args[@]}"
  cuda_kernels=$(grep -o 'mopt: CUDA kernels [A-Z]*' "$OUT_DIR/build.log" | tail -n 1 | awk '{print $4}')
  cuda_ops=$(grep -o 'CUDA op registrations [A-Z]*' "$OUT_DIR/build.log" | tail -n 1 | awk '{print $4}')
  note="CUDA kernels ${cuda_kernels:-?}, CUDA op registrations ${cuda_ops:-?}${ARCHS:+, archs $ARCHS}"
  if ((STEP_RC == 125)); then
    :
  elif ((STEP_RC != 0)); then
    record configure FAIL "$STEP_SECONDS" "exit $STEP_RC; $note" build.log
    tail -n 15 "$OUT_DIR/build.log" | sed 's/^/   | /'
  elif ((HAVE_GPU)) && [ "$TORCH_CUDA" != none ] && [ "$cuda_ops" != ON ]; then
    record configure FAIL "$STEP_SECONDS" "$note: a GPU and a CUDA torch are here, but the CUDA glue is not built (nvcc: ${NVCC:-none})" build.log
  else
    record configure PASS "$STEP_SECONDS" "$note" build.log
  fi

  if ((STEP_RC == 0)); then
    STEP_NOTE="$JOBS jobs" run_step build "$BUILD_CAP" build.log cmake --build "$BUILD_GPU" -j "$JOBS" -- -k 0
    BUILT=1
  fi
fi
if ((!BUILT)); then
  record build SKIP 0 "nothing to build against (see deps/configure)" build.log
fi

# ---------------------------------------------------------------------------------------------
if ((BUILT)); then
  NO_RECORD=1 run_step ctest-cuda 150 ctest_cuda.log \
    ctest --test-dir "$BUILD_GPU" -R Cuda --output-on-failure -j "$JOBS" --timeout 120 --no-tests=error
  if ((STEP_RC != 125)); then
    counts=$(grep -E 'tests passed|tests failed' "$OUT_DIR/ctest_cuda.log" | tail -n 1)
    skipped=$(grep -c '(Skipped)' "$OUT_DIR/ctest_cuda.log")
    note="${counts:-no ctest summary}; $skipped skipped"
    if ((STEP_RC == 0)); then
      record ctest-cuda PASS "$STEP_SECONDS" "$note" ctest_cuda.log
    else
      record ctest-cuda FAIL "$STEP_SECONDS" "exit $STEP_RC; $note" ctest_cuda.log
      tail -n 15 "$OUT_DIR/ctest_cuda.log" | sed 's/^/   | /'
    fi
  fi

  NO_RECORD=1 run_step pytest-cuda 200 pytest_cuda.log \
    "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/python
  if ((STEP_RC != 125)); then
    note=$(grep -E '^=* ?[0-9]+ (passed|failed|skipped|error)' "$OUT_DIR/pytest_cuda.log" |
      tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    if ((STEP_RC == 0)); then
      record pytest-cuda PASS "$STEP_SECONDS" "${note:-}" pytest_cuda.log
    else
      record pytest-cuda FAIL "$STEP_SECONDS" "exit $STEP_RC; ${note:-no pytest summary}" pytest_cuda.log
      tail -n 15 "$OUT_DIR/pytest_cuda.log" | sed 's/^/   | /'
    fi
  fi

  for bench in bench_fake_quant bench_block_formats bench_sparse_gemm; do
    NO_RECORD=1 run_step "$bench" 120 bench_gpu.md "$PY" "benchmarks/$bench.py" --no-cpu
    ((STEP_RC == 125)) && continue
    if ((STEP_RC != 0)); then
      record "$bench" FAIL "$STEP_SECONDS" "exit $STEP_RC" bench_gpu.md
      tail -n 15 "$OUT_DIR/bench_gpu.md" | sed 's/^/   | /'
    elif ((HAVE_GPU)); then
      record "$bench" PASS "$STEP_SECONDS" "GPU table in bench_gpu.md" bench_gpu.md
    else
      record "$bench" SKIP "$STEP_SECONDS" "ran; no GPU, so no GPU section" bench_gpu.md
    fi
  done

  if ((HAVE_GPU)); then
    STEP_NOTE="the make-demo table on the GPU" run_step ptq-cuda 150 ptq_cuda.log \
      "$PY" -m mopt ptq --model default --configs all --device cuda --no-progress \
      --out "$OUT_DIR/ptq_cuda"
  else
    record ptq-cuda SKIP 0 "no GPU" ptq_cuda.log
  fi

  # compute-sanitizer last: the budget cuts what comes last. The torch caching allocator would
  # hide out-of-bounds accesses inside its blocks, so it is off for these runs.
  for tool in memcheck racecheck; do
    for bin in mopt_kernel_cuda_tests mopt_lib_tests; do
      name="sanitizer-$tool-${bin#mopt_}"
      name=${name%_tests}
      filter=()
      [ "$bin" = mopt_lib_tests ] && filter=("--gtest_filter=*Cuda*")
      if [ -z "$SANITIZER" ]; then
        record "$name" SKIP 0 "compute-sanitizer not installed" sanitizer.log
      elif ((!HAVE_GPU)); then
        record "$name" SKIP 0 "no GPU" sanitizer.log
      elif [ ! -x "$BUILD_GPU/$bin" ]; then
        record "$name" FAIL 0 "$bin was not built" sanitizer.log
      else
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 NO_RECORD=1 run_step "$name" 90 sanitizer.log \
          "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 "$BUILD_GPU/$bin" \
          "${filter[@]}"
        ((STEP_RC == 125)) && continue
        if ((STEP_RC == 0)); then
          record "$name" PASS "$STEP_SECONDS" "" sanitizer.log
        elif tail -n 30 "$OUT_DIR/sanitizer.log" | grep -q 'Device not supported'; then
          record "$name" SKIP "$STEP_SECONDS" "compute-sanitizer does not support this device" sanitizer.log
        else
          why="exit $STEP_RC"
          ((STEP_RC == 124 || STEP_RC == 137)) && why="timed out"
          record "$name" FAIL "$STEP_SECONDS" "$why" sanitizer.log
          tail -n 15 "$OUT_DIR/sanitizer.log" | sed 's/^/   | /'
        fi
      fi
    done
  done
fi

# ---------------------------------------------------------------------------------------------
{
  say "mopt gpu-check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(elapsed) s of a ${BUDGET} s budget"
  say "gpu: ${GPU_NAME:-none}; torch $TORCH_VERSION (CUDA $TORCH_CUDA); $(nproc) cores"
  ((HAVE_GPU)) || say "NO GPU: dry run; steps that need a GPU are SKIP, the CUDA tests skipped inside"
  say "logs and tables: $OUT_DIR"
  say ""
  printf '%-30s %-4s %6s  %-16s %s\n' step stat time log note
  printf '%s\n' "${SUMMARY[@]}"
  say ""
  if ((FAILED)); then say "result: FAILED"; else say "result: no failures"; fi
} >"$OUT_DIR/summary.txt"
say ""
cat "$OUT_DIR/summary.txt"
if [ -n "$TAR" ]; then
  tar -czf "$TAR" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" && say "archive: $TAR"
fi
exit "$FAILED"
