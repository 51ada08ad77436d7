#!/usr/bin/env bash
# All GPU measurements in one go (< 5 minutes on an H200), for a borrowed GPU machine.
# Installs nothing: run it from the repo root with the project's venv already there, or,
# on the lent GPU machine (no Optuna, no internet), after benchmarks/gpu_prepare.sh here:
# that script's header has the one device command.
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # on the GPU machine
#   ACCURACY=1 bash benchmarks/gpu_check.sh OUT_DIR  # also train the tuned presets (+~3 min)
#   SMOKE=1 bash benchmarks/gpu_check.sh OUT_DIR  # the same flow on the CPU, tiny sizes (tests use this)
#
# Writes OUT_DIR/gpu_check.log (everything printed), the JSON of each benchmark and the
# study's CSV: 5 files, within the 8 a device run returns. The study's SQLite file and
# artifacts go to a temporary folder.
set -euo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
CLI=("$PY" -m fmnist_search)
STORE=$(mktemp -d)
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [[ "${SMOKE:-0}" == 1 ]]; then
  DEVICE=cpu MODELS=lenet BATCHES=3 REPS=1 WORKERS=0 TRIALS=2 STUDY_ARGS=(--epochs 1 --train-size 1024 --val-size 1000)
else
  DEVICE=cuda MODELS=lenet,resnet18,resnet34 BATCHES=100 REPS=3 WORKERS=4 TRIALS=30 STUDY_ARGS=(--epochs 10)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

echo "== 1. throughput: report pipeline vs ours (batch 256)"
"$PY" benchmarks/throughput.py --device "$DEVICE" --models "$MODELS" --batches "$BATCHES" --reps "$REPS" \
  --workers "$WORKERS" --json "$OUT/throughput.json"
if [[ "${SMOKE:-0}" != 1 ]]; then  # inductor's C++ build on a small CPU takes a minute: GPU runs only
  echo "== 1b. throughput with torch.compile"
  "$PY" benchmarks/throughput.py --device "$DEVICE" --models "$MODELS" --batches "$BATCHES" --reps "$REPS" \
    --workers "$WORKERS" --compile --json "$OUT/throughput-compiled.json"
fi

echo "== 2. a ${TRIALS}-trial LeNet study, timed"
start=$(date +%s%N)
"${CLI[@]}" run --model lenet --trials "$TRIALS" --device "$DEVICE" --storage "sqlite:///$STORE/gpu_check.db" \
  --study gpu-check-lenet "${STUDY_ARGS[@]}"
end=$(date +%s%N)
echo "study wall time: $(( (end - start) / 1000000 )) ms"
"${CLI[@]}" export --study gpu-check-lenet --storage "sqlite:///$STORE/gpu_check.db" --output "$OUT/gpu_check_lenet.csv"
echo "== 3. study throughput: workers packed on one GPU (trials/hour)"
if [[ "${SMOKE:-0}" == 1 ]]; then
  "$PY" benchmarks/scale.py --workers 1,2 --trials 2 --epochs 1 --train-size 512 --val-size 500 --reps 1 \
    --json "$OUT/scale.json"
else
  "$PY" benchmarks/scale.py --gpu --workers 1,4,8 --trials 32 --epochs 10 --train-size 0 --val-size 10000 --reps 1 \
    --json "$OUT/scale.json"
fi
if [[ "${ACCURACY:-0}" == 1 && "${SMOKE:-0}" != 1 ]]; then  # ~2 more minutes on an H200
  echo "== 4. tuned recipes (test accuracy is the last line of each; lenet-tuned trains its airbench teacher first)"
  for m in resnet18 resnet34 airbench lenet; do
    "${CLI[@]}" train --preset "$m-tuned" --device cuda | tail -n 3
  done
fi
echo "== done"
