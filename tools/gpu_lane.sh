#!/usr/bin/env bash
# The GPU lane in one command: on a machine with CUDA, install what is missing, run the GPU tests
# (CREMA_GPU_LANE=1 python -m pytest -m gpu) and the GPU benchmarks (crema-fast bench attention loss train eval,
# run as python -m crema_fast.cli bench), and keep the results under benchmarks/results/: the rows each benchmark
# appends through harness.record() (<bench>.jsonl), the bench report (report_<device>_<commit>.md and its
# PNGs) and the full log, gpu_lane_<device>_<UTC date>.log. Where $OUT is set (the device machine's copy-back
# folder), the log, the report and its PNGs are copied there, and benchmarks/results/ as one tarball
# (gpu_lane_results.tgz: at most 8 files come back from that machine).
#
# Usage (from anywhere; it works in the repository root):
#   tools/gpu_lane.sh            # tests, then benchmarks
#   tools/gpu_lane.sh tests      # only the GPU tests
#   tools/gpu_lane.sh bench      # only the benchmarks
# The bench stages: GPU_LANE_BENCH_STAGES (e.g. "attention train"), else from GPU_LANE_BENCH_K: by default "gpu",
# the GPU stages (attention, the fused loss, the training step, embedding); empty for every stage (the store and
# data-path ones time this machine's CPU, minutes of device time); any other -k expression runs every stage's
# program with that -k. GPU_LANE_BENCH_QUICK=1 makes it crema-fast bench --quick. Extra pytest arguments for every
# benchmark program go in GPU_LANE_BENCH_ARGS (split at spaces; a -k there wins). The training benchmark trains on
# $CREMA_BENCH_STORE; where that is unset, the lane builds one of GPU_LANE_SYNTH_ROWS (default 20000) rows with
# tools/synth_store.py into runs/stores/ (set GPU_LANE_SYNTH_ROWS=0 for the old default: the records at hand).
# By hand: python tools/synth_store.py 50000 runs/stores/synth-50000.zarr --workers 8 (~2,600 rows/s per core; --help). The tests
# run in GPU_LANE_WORKERS (default 8) processes where pytest-xdist is installed: most of their time is
# Triton compiling each autotuning config (123 tests: 134 s on an H100 machine's 16 cores).
#
# The CUDA test machine has Python 3.12 with torch and triton but not zarr, wfdb and a few others. Before
# going there, run ../shared/tools/gpu-wheels.sh zarr==3.1.6 numcodecs==0.16.6 zstandard bitshuffle here (it fills .whl/, ignored
# by git; newer zarr needs msgspec, which it does not fetch, and zarr's pytest plugin then breaks every
# pytest run there, which is also why the runs below pass -p no:zarr) and carry .whl along;
# this script installs those wheels into .site (ignored) and puts the repository and .site on PYTHONPATH.
# Without them the modules that need them fail to collect; the other tests and benchmarks still run.
#
# Exit status: that of the GPU tests (0 = passed; 5 = no GPU test ran, a failure here too). A benchmark
# that is missing, skipped or failing does not fail the lane; the log says what happened.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
MODE=${1:-all}
case "$MODE" in all|tests|bench) ;; *) echo "usage: $0 [all|tests|bench]" >&2; exit 2 ;; esac
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_lane: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing to do" >&2
  exit 2
fi

DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name())' | tr -c 'A-Za-z0-9.\n-' '_' | tr -s '_')
STAMP=$(date -u +%Y%m%dT%H%MZ)
mkdir -p benchmarks/results
LOG=benchmarks/results/gpu_lane_${DEVICE}_${STAMP}.log
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

# --- install what is missing ---------------------------------------------------------------------------
NEEDED="numpy scipy numba zarr numcodecs google_crc32c wfdb fsspec pandas tqdm pytest pytest_benchmark"
missing() { "$PY" - "$@" <<'EOF'
import importlib, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$(missing $NEEDED)" ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "gpu_lane: installing $(ls .whl/*.whl | wc -l) wheels from .whl into .site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    2>&1 | tee -a "$LOG"
fi
[ -d .site ] && export PYTHONPATH="$ROOT:$ROOT/.site${PYTHONPATH#"$ROOT"}"
STILL=$(missing $NEEDED)
[ -n "$STILL" ] && say "gpu_lane: still missing: $STILL (run ../shared/tools/gpu-wheels.sh here and carry .whl)"

{
  echo "== gpu_lane $MODE on $DEVICE at $STAMP"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__)'
} 2>&1 | tee -a "$LOG"

# --- the GPU tests ---------------------------------------------------------------------------------------
TEST_RC=0
if [ "$MODE" != bench ]; then
  say "== CREMA_GPU_LANE=1 python -m pytest -m gpu"
  XDIST=()
  "$PY" -c 'import xdist' 2>/dev/null && XDIST=(-n "${GPU_LANE_WORKERS:-8}")
  CREMA_GPU_LANE=1 "$PY" -m pytest -m gpu ${XDIST[@]+"${XDIST[@]}"} -q -rfEs --continue-on-collection-errors -p no:cacheprovider -p no:zarr 2>&1 \
    | tee -a "$LOG"
  TEST_RC=${PIPESTATUS[0]}
  say "== GPU tests: exit $TEST_RC"
fi

# --- the benchmarks: crema-fast bench (the GPU stages unless GPU_LANE_BENCH_STAGES / _K say otherwise) ----
REPORT=
if [ "$MODE" != tests ]; then
  K=${GPU_LANE_BENCH_K-gpu}
  STAGES=${GPU_LANE_BENCH_STAGES-}
  PYARGS="--continue-on-collection-errors -p no:zarr"
  if [ -z "$STAGES" ]; then
    case "$K" in
      gpu) STAGES="attention loss train eval" ;;
      "") ;;                                       # every stage
      *) PYARGS="$PYARGS -k $K" ;;                 # every stage's program, with that -k
    esac
  fi
  # K first: pytest keeps the last -k, so one given in GPU_LANE_BENCH_ARGS still wins
  PYARGS="$PYARGS ${GPU_LANE_BENCH_ARGS:-}"
  if [ -z "${CREMA_BENCH_STORE:-}" ] && [ "${GPU_LANE_SYNTH_ROWS:-20000}" != 0 ] && [ -f tools/synth_store.py ]; then
    SYNTH=runs/stores/synth-${GPU_LANE_SYNTH_ROWS:-20000}.zarr
    if [ ! -f "$SYNTH/zarr.json" ]; then
      say "== python tools/synth_store.py ${GPU_LANE_SYNTH_ROWS:-20000} $SYNTH --workers 8"
      mkdir -p runs/stores
      "$PY" tools/synth_store.py "${GPU_LANE_SYNTH_ROWS:-20000}" "$SYNTH" --workers 8 2>&1 | tee -a "$LOG"
    fi
    [ -f "$SYNTH/zarr.json" ] && export CREMA_BENCH_STORE=$ROOT/$SYNTH
  fi
  QUICK=()
  [ -n "${GPU_LANE_BENCH_QUICK:-}" ] && [ "${GPU_LANE_BENCH_QUICK}" != 0 ] && QUICK=(--quick)
  say "== python -m crema_fast.cli bench ${STAGES:-(every stage)} ${QUICK[*]-} --pytest-args \"$PYARGS\""
  # shellcheck disable=SC2086
  "$PY" -m crema_fast.cli bench $STAGES ${QUICK[@]+"${QUICK[@]}"} --pytest-args "$PYARGS" 2>&1 | tee -a "$LOG"
  say "== benchmarks: exit ${PIPESTATUS[0]} (not counted in this script's status)"
  REPORT=$(sed -n 's/^report: //p' "$LOG" | tail -n 1)
fi

say "== results: $LOG, benchmarks/results/*.jsonl${REPORT:+ and $REPORT}"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$LOG" "$OUT"/ && tar czf "$OUT"/gpu_lane_results.tgz benchmarks/results
  if [ -n "$REPORT" ] && [ -f "$REPORT" ]; then
    cp "$REPORT" "${REPORT%.md}"_*.png "$OUT"/ 2>/dev/null || cp "$REPORT" "$OUT"/
  fi
  say "== copied to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit "$TEST_RC"
