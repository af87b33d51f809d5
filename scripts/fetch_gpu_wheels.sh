#!/usr/bin/env bash
# Downloads the Python packages scripts/gpu_check.sh wants on the GPU machine, which has no network,
# into .gpu-wheels/ in the repository root (ignored through .git/info/exclude, not .gitignore, so
# only the session that fetched them carries them). Run it here, with network, before the device
# call, and name .gpu-wheels in the call's `carry`; gpu_check.sh installs every wheel in that folder
# with `pip install --no-deps --no-index` before its steps.
#   inf-cl 1.2.1: Inf-CL's Triton loss (cal_inf_loss), the loss-timing step's third column. Pure
#   Python; it needs numpy and triton, which the GPU image has, so no dependencies are fetched.
#   siglip-kernel 0.1.2: the fused SigLIP loss in Triton (fused_siglip_loss), the SigLIP step's
#   peer (benchmarks/gpu_siglip.py); pure Python on torch and triton.
# PYTHON picks the pip (default: the repo's .venv, else python3); extra NAME==VERSION arguments
# fetch more wheels the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu-wheels
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$DEST" .git/info
grep -qxF '/.gpu-wheels/' .git/info/exclude 2>/dev/null || echo '/.gpu-wheels/' >> .git/info/exclude
# Pure-Python wheels only (py3-none-any): the device's Python (3.12) differs from this machine's.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" "inf-cl==1.2.1" "siglip-kernel==0.1.2" "$@"
ls -l "$DEST"
du -sh "$DEST"
