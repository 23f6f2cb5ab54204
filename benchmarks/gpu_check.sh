#!/usr/bin/env bash
# One prepared GPU check: install the offline wheelhouse into a fresh venv, then measure
# (benchmarks/gpu_check.py): pretraining step throughput (hard vs ALS, eager vs torch.compile),
# the JPEG input path (CPU workers, and the trainer's DATA.DECODE device path on the GPU) and detectron2
# fine-tuning speed; then, on a GPU, every stage of the chain for a few iterations with the GPU
# settings (configs/experiments/gpu_smoke.yaml). Every part has a time cap; the whole check stays
# under 10 minutes on one H100.
#
# usage: benchmarks/gpu_check.sh [--out DIR] [--cpu-smoke] [--wheelhouse DIR] [--python PY]
#   environment: GPU_CHECK_SECTIONS (default pretrain,input,gpu_decode,finetune), GPU_CHECK_TIMEOUT
#   (all sections, default 450 s), GPU_SMOKE_TIMEOUT (the chain, default 150 s)
#   GPU machine: build the wheelhouse first on a machine with network
#                (python benchmarks/build_wheelhouse.py --python-version 3.12 wheelhouse),
#                bring wheelhouse/ along with the tree, then run this script.
#   --cpu-smoke: this CPU machine; builds a wheelhouse for the project's own Python under DIR,
#                installs it into a fresh venv that sees only the packages a GPU machine has
#                (benchmarks/emulate_preinstalled.py), and runs every section at tiny sizes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/benchmarks/out/gpu_check"
SMOKE=0
WHEELHOUSE=""
PY="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
VENV="$OUT/venv"
rm -rf "$VENV"

if [[ $SMOKE -eq 1 ]]; then
  PROJECT_PY="$REPO/.venv/bin/python"
  [[ -x "$PROJECT_PY" ]] || { echo "gpu_check.sh: $PROJECT_PY missing; run make setup" >&2; exit 2; }
  PY="$("$PROJECT_PY" -c 'import sys; print(sys._base_executable)')"
  PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  WHEELHOUSE="${WHEELHOUSE:-$OUT/wheelhouse-$PYVER}"
  echo "== building wheelhouse for python $PYVER in $WHEELHOUSE"
  "$PROJECT_PY" "$REPO/benchmarks/build_wheelhouse.py" --python-version "$PYVER" "$WHEELHOUSE" \
    > "$OUT/build_wheelhouse.log" 2>&1 || { tail -20 "$OUT/build_wheelhouse.log"; exit 1; }
  tail -1 "$OUT/build_wheelhouse.log"
  # A bare venv plus a .pth to symlinks of just the GPU machine's preinstalled packages.
  "$PY" -m venv --without-pip "$VENV"
  "$PROJECT_PY" "$REPO/benchmarks/emulate_preinstalled.py" "$OUT/preinstalled" | cut -c1-160
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$OUT/preinstalled" > "$SITE/gpu_machine_preinstalled.pth"
else
  WHEELHOUSE="${WHEELHOUSE:-$REPO/wheelhouse}"
  # A bare venv that sees the interpreter's own packages (torch, pip, ...) after its own, through
  # a .pth: unlike --system-site-packages this also works when python3 is itself a venv/conda env.
  "$PY" -m venv --without-pip "$VENV"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$PY" -c 'import os, site
for d in site.getsitepackages() + [site.getusersitepackages()]:
    if os.path.isdir(d):
        print(f"import site; site.addsitedir({d!r})")' > "$SITE/gpu_machine_preinstalled.pth"
fi
VPY="$VENV/bin/python"
PYVER="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

[[ -f "$WHEELHOUSE/wheelhouse.json" ]] || {
  echo "gpu_check.sh: no $WHEELHOUSE/wheelhouse.json; build it on a machine with network:" >&2
  echo "  python benchmarks/build_wheelhouse.py --python-version $PYVER $WHEELHOUSE" >&2; exit 2; }
WANT="$("$VPY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["python_version"])' "$WHEELHOUSE/wheelhouse.json")"
[[ "$WANT" == "$PYVER" ]] || {
  echo "gpu_check.sh: $WHEELHOUSE was built for python $WANT but this interpreter is $PYVER;" >&2
  echo "  rebuild: python benchmarks/build_wheelhouse.py --python-version $PYVER $WHEELHOUSE" >&2; exit 2; }

"$VPY" "$REPO/benchmarks/build_wheelhouse.py" --check-fresh "$WHEELHOUSE"

echo "== installing $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels from $WHEELHOUSE into $VENV (no index)"
"$VPY" -m pip --disable-pip-version-check install -q --no-index --no-deps --ignore-installed "$WHEELHOUSE"/*.whl \
  > "$OUT/pip_install.log" 2>&1 || { cat "$OUT/pip_install.log"; exit 1; }
if [[ $SMOKE -eq 1 ]]; then
  # Every requirement of every installed distribution must be met by wheelhouse + preinstalled,
  # except detectron2's declared tool requirements that the project never installs (as in .venv).
  UNMET="$("$VPY" -m pip --disable-pip-version-check check 2>&1 \
    | grep -Ev '^pb1-detectron2 0\.6 requires (black|future|pydot), which is not installed\.$' \
    | grep -v '^No broken requirements found' || true)"
  [[ -z "$UNMET" ]] || { echo "gpu_check.sh: unmet requirements after the offline install:" >&2;
                         echo "$UNMET" >&2; exit 1; }
  echo "pip check: every requirement met (detectron2's black/future/pydot are not used)"
fi
# detectron2 and its dependencies must come from the venv, torch from the preinstalled packages.
(cd "$OUT" && "$VPY" - "$VENV") <<'EOF'
import importlib, os, sys
venv = os.path.realpath(sys.argv[1])
from_wheelhouse = ["als_det", "detectron2", "pycocotools", "fvcore", "iopath", "yacs", "termcolor",
                   "omegaconf", "hydra", "antlr4", "submitit"]
for name in from_wheelhouse:
    path = os.path.realpath(importlib.import_module(name).__file__)
    if not path.startswith(venv + os.sep):
        sys.exit(f"{name} imported from {path}, not from the wheelhouse venv {venv}")
for name in ["torch", "torchvision", "numpy", "PIL", "cv2", "matplotlib", "tensorboard"]:
    path = os.path.realpath(importlib.import_module(name).__file__)
    if path.startswith(venv + os.sep):
        sys.exit(f"{name} came from the venv ({path}); it should be the preinstalled one")
import detectron2.modeling, detectron2.evaluation, pycocotools.coco, pycocotools.cocoeval  # noqa
print(f"imports ok: {len(from_wheelhouse)} packages from the wheelhouse, torch preinstalled")
EOF
echo "== install took $(( $(date +%s) - START )) s"

# The measurements; one hard cap for all of them (sections cap themselves inside it).
SMOKE_FLAG=()
[[ $SMOKE -eq 1 ]] && SMOKE_FLAG=(--cpu-smoke)
cd "$REPO"
RC=0
timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-450}" \
  "$VPY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "${SMOKE_FLAG[@]}" \
  --sections "${GPU_CHECK_SECTIONS:-pretrain,input,gpu_decode,finetune}" 2>&1 | tee "$OUT/gpu_check.log" \
  || RC=$?

# On a GPU: every stage of the chain for a few iterations with the GPU settings
# (configs/experiments/gpu_smoke.yaml); als_det from this tree, so the plan finds its configs.
if [[ $SMOKE -eq 0 ]]; then
  echo "== chain: configs/experiments/gpu_smoke.yaml (cap ${GPU_SMOKE_TIMEOUT:-150} s)"
  CHAIN_START=$(date +%s)
  PYTHONPATH="$REPO" timeout --kill-after=10 "${GPU_SMOKE_TIMEOUT:-150}" "$VPY" \
    "$REPO/tools/run_experiment.py" --plan configs/experiments/gpu_smoke.yaml --out "$OUT/chain" \
    > "$OUT/chain.log" 2>&1 || { echo "chain FAILED (exit $?): $OUT/chain.log"; RC=1; }
  grep -E "FAILED|stage\(s\) ran|not run because" "$OUT/chain.log" || true
  echo "== chain took $(( $(date +%s) - CHAIN_START )) s; report: $OUT/chain/report.md"
fi
echo "== gpu_check.sh finished in $(( $(date +%s) - START )) s; figures in $OUT/gpu_check.json"
exit $RC
