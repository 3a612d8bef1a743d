#!/usr/bin/env bash
# One-command GPU check (issue 13): build with CUDA, run the CUDA tests, the CUDA benchmark rows and a
# roofline of the fused ops, and write $OUT/gpu_summary.json. Meant for a lent GPU machine with no
# internet, run from the repository root:
#
#     bash benchmarks/gpu_check.sh               # on the GPU machine
#     bash benchmarks/gpu_check.sh --dry-run     # CPU rehearsal: no build (uses the in-place one), tiny rounds
#
# Through the device tool: command "bash benchmarks/gpu_check.sh", timeout_s 480 (the budget is 420 s).
#
# Env: OUT (results folder; default /tmp/gpu_check_out), GPU_CHECK_DRY_RUN=1 (= --dry-run),
# GPU_CHECK_BUDGET_S (whole run, default 420), GPU_CHECK_PYTHON (default python3; .venv/bin/python in a
# dry run), TORCH_CUDA_ARCH_LIST (default: the visible GPU's capability).
# Every stage runs under `timeout` and later stages run whatever earlier ones did; each stage prints one
# status line. Files left in $OUT: gpu_summary.json, gpu_check.log, build.log, tests.log, tests.xml,
# bench.log, the bench_*.json, and cuda-covered.json when every CUDA test passed.
set -u
set -o pipefail

DRY=${GPU_CHECK_DRY_RUN:-0}
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $a" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT" || { echo "gpu_check: cannot create OUT=$OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)  # stages run from other folders
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
BUDGET=${GPU_CHECK_BUDGET_S:-420}
RESERVE=20  # kept back for the summary stage
T0=$SECONDS
LOG=$OUT/gpu_check.log
: >"$LOG"
: >"$SCRATCH/stages.tsv"

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, not an installed copy
export PYTHONUNBUFFERED=1

say() { echo "[gpu_check $(( SECONDS - T0 ))s] $*" | tee -a "$LOG"; }

# record NAME STATUS RC SECONDS LIMIT NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SCRATCH/stages.tsv"; }

# stage NAME MAX_S LOGFILE CMD...: run CMD under timeout (SIGINT first, so pytest still writes its junit
# and benchmark JSON), clipped to the time left in the budget; append one status line.
stage() {
  local name=$1 max=$2 log=$3; shift 3
  local left=$(( BUDGET - (SECONDS - T0) - RESERVE ))
  local t=$max
  (( left < t )) && t=$left
  if (( t < 5 )); then
    record "$name" skipped - 0 "$t" "time budget spent"
    say "$name: SKIPPED (time budget spent)"
    return 99
  fi
  local s=$SECONDS rc status
  echo "### $name: $*" >>"$log"
  timeout -s INT -k 15 "$t" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$(( SECONDS - s ))" "$t" "${NOTE:-}"
  say "$name: ${status^^} (rc=$rc, $(( SECONDS - s ))s of ${t}s) log=$(basename "$log")"
  return $rc
}

say "repo $REPO, OUT $OUT, python $PY, budget ${BUDGET}s, dry run $DRY"

# ---- 1. environment ---------------------------------------------------------------------------------
{ nvidia-smi 2>&1 || echo "nvidia-smi unavailable"; } >>"$LOG"
NOTE="" stage env 60 "$LOG" "$PY" benchmarks/gpu_roofline.py env --out "$SCRATCH/env.json"
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$GPU" = 1 ]; then
  DEVICE=cuda
  ARCH=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
elif [ "$DRY" = 1 ]; then
  DEVICE=cpu
  say "no GPU visible: dry run on the CPU (no build, tiny rounds, CUDA timings skipped)"
else
  say "no GPU visible to $PY and no --dry-run: nothing to check. Rerun with --dry-run for a CPU rehearsal."
  record gpu failed 1 0 0 "no GPU visible"
  "$PY" benchmarks/gpu_roofline.py summary --out-dir "$OUT" --scratch "$SCRATCH" --mode gpu | tee -a "$LOG"
  exit 1
fi

# ---- 2. build (CUDA on, the system g++) ----------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  record build skipped - 0 0 "dry run: the existing in-place build is used"
  say "build: SKIPPED (dry run uses the existing in-place build)"
  : >"$OUT/build.log"
else
  # The image's default compiler links libstdc++ statically; a TORCH_CHECK message then aborts the process.
  unset CC CXX
  [ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++
  export CBGAN_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=${MAX_JOBS:-$(nproc)}
  { echo "CC=${CC:-} CXX=${CXX:-} TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$MAX_JOBS"; ${CXX:-c++} --version | head -1
    nvcc --version | tail -1; } >"$OUT/build.log" 2>&1
  NOTE="setup.py build_ext --inplace, archs $ARCH" stage build 270 "$OUT/build.log" \
    "$PY" setup.py build_ext --inplace
  [ $? = 0 ] || say "build failed: see the end of build.log; later stages will fail to import cbgan_ext"
fi

# ---- 3. import check: the build loads, has the expected kernels, and an error message does not abort ----
NOTE="" stage import 60 "$OUT/build.log" "$PY" - "$DEVICE" "$SCRATCH/build_info.json" <<'EOF'
import json, sys
import torch
import cbgan_ext
from cbgan_ext import ops
dev, path = sys.argv[1], sys.argv[2]
info = cbgan_ext.build_info()
info["cuda_kernels_available"] = cbgan_ext.cuda_kernels_available()
print("build_info:", info)
try:  # a C++ TORCH_CHECK failure must come back as a Python exception
    ops.class_balancing_loss(torch.zeros(2, 3, device=dev), torch.zeros(4, device=dev))
    info["error_message_check"] = "no error raised"
except Exception as e:
    info["error_message_check"] = f"ok: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
print(info["error_message_check"])
json.dump(info, open(path, "w"), indent=1)
if dev == "cuda" and not info["cuda_kernels_available"]:
    sys.exit("the build has no CUDA kernels")
sys.exit(0 if info["error_message_check"].startswith("ok") else 1)
EOF

# ---- 4. CUDA tests (needs_cuda marks, including the cuda params of DEVICES, plus the build facts) ------
TEST_ARGS=(-p no:cacheprovider -q -rfE python_tests -k "needs_cuda or test_build.py" --junitxml="$OUT/tests.xml")
[ "$DRY" = 1 ] && TEST_ARGS+=(-x)
: >"$OUT/tests.log"
NOTE="pytest python_tests -k 'needs_cuda or test_build.py'" stage tests 180 "$OUT/tests.log" \
  "$PY" -m pytest "${TEST_ARGS[@]}"
TESTS_RC=$?
tail -3 "$OUT/tests.log" | tee -a "$LOG"
# The sources these tests ran on: committed as benchmarks/results/cuda-covered.json when they all passed,
# `python benchmarks/cuda_coverage.py` then lists the CUDA tests whose code changed since.
[ "$TESTS_RC" = 0 ] && [ "$DRY" != 1 ] && "$PY" benchmarks/cuda_coverage.py record "$OUT/cuda-covered.json" | tee -a "$LOG"

# ---- 5. roofline: copy bandwidth, bytes per op, host time of DiffAugment ---------------------------------
ROOF_ARGS=(measure --device "$DEVICE" --out "$SCRATCH/roofline.json")
[ "$DRY" = 1 ] && ROOF_ARGS+=(--tiny)
NOTE="" stage roofline 90 "$LOG" "$PY" benchmarks/gpu_roofline.py "${ROOF_ARGS[@]}"

# ---- 6. benchmarks: fused and eager rows first, the torch.compile rows (slow to compile) last -----------
BENCH_FILES=(bench_class_balancing.py bench_diff_augment.py bench_projection.py bench_spectral_norm.py)
BENCH_COMMON=(-q -p no:cacheprovider --rootdir "$REPO/benchmarks" -c /dev/null --benchmark-only
              --benchmark-warmup on)
if [ "$DRY" = 1 ]; then
  export CBGAN_BENCH_THREADS=1
  BENCH_COMMON+=(-x --benchmark-min-rounds 2 --benchmark-max-time 0.02 --benchmark-warmup-iterations 1
                 -m "not needs_cuda")
  K_MAIN="256-10-fused-cpu or 256-10-eager-cpu or 256x3x32x32-fused-cpu or 256x3x32x32-eager-cpu or (test_spectral_norm_update and fused-cpu)"
  K_COMPILED="256-10-compiled-cpu"
else
  BENCH_COMMON+=(--benchmark-min-rounds 5 --benchmark-max-time 0.2 --benchmark-warmup-iterations 5 -m needs_cuda)
  K_MAIN="not compiled"
  K_COMPILED="compiled"
fi
: >"$OUT/bench.log"
(cd benchmarks && NOTE="-k '$K_MAIN'" stage bench 120 "$OUT/bench.log" \
  "$PY" -m pytest "${BENCH_COMMON[@]}" --benchmark-json "$OUT/bench_main.json" -k "$K_MAIN" "${BENCH_FILES[@]}")
# One process per suite: a timeout then loses one suite's JSON, not all of them.
for f in bench_class_balancing bench_diff_augment bench_projection; do
  (cd benchmarks && NOTE="-k '$K_COMPILED'" stage "compiled_${f#bench_}" 90 "$OUT/bench.log" \
    "$PY" -m pytest "${BENCH_COMMON[@]}" --benchmark-json "$OUT/bench_compiled_${f#bench_}.json" \
    -k "$K_COMPILED" "$f.py")
  rc=$?
  # pytest exits 5 when -k selects nothing in a suite (a dry run's subset): not a failure of the suite.
  [ $rc = 5 ] && sed -i "\$s/\tfailed\t5\t/\tskipped\t5\t/" "$SCRATCH/stages.tsv"
done
grep -E "passed|failed|error" "$OUT/bench.log" | tail -5 | tee -a "$LOG"

# ---- 7. summary (always) -------------------------------------------------------------------------------
MODE=gpu; [ "$DRY" = 1 ] && MODE=dry-run
say "total $(( SECONDS - T0 ))s of ${BUDGET}s"
timeout -k 5 60 "$PY" benchmarks/gpu_roofline.py summary --out-dir "$OUT" --scratch "$SCRATCH" --mode "$MODE" \
  2>&1 | tee -a "$LOG"
rc=$?
say "summary: $([ $rc = 0 ] && echo OK || echo "FAILED rc=$rc") -> $OUT/gpu_summary.json"
rm -rf "$SCRATCH"
# Exit 0 only when every stage passed, so a caller can tell at a glance.
"$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s['all_stages_ok'] else 1)" \
  "$OUT/gpu_summary.json" 2>/dev/null
