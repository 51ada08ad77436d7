#!/usr/bin/env bash
# Every GPU figure in one run of under 8 minutes on an H200, for a borrowed GPU machine
# (a hard budget: ~15 minutes of device time in all, at most 10 per command).
# Installs nothing: run it from the repo root with the project's venv, or on the lent GPU
# machine after benchmarks/gpu_prepare.sh here (its header has the one device command).
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh OUT_DIR    # the same flow on the CPU, tiny sizes (a test runs it)
#
# Most important first; each step runs under its own `timeout`, capped by what is left of
# the whole budget (BUDGET_S, 450 s), and a failed or timed-out step does not stop the rest.
# Each figure lands in OUT_DIR as soon as it is measured (at most 8 files, what a device run
# returns): gpu_check.log (everything printed), steps.txt (each step: status, seconds),
# throughput.json, population.json, study-sequential.csv, study-population.csv, scale.json,
# graphs.json. The studies' SQLite files and weights stay in a temporary folder.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
CLI=("$PY" -m fmnist_search)
STORE=$(mktemp -d)
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-450}

if [[ "${SMOKE:-0}" == 1 ]]; then
  DEVICE=cpu WORKERS=0 LENET_BATCHES=3 RESNETS=airbench RESNET_BATCHES=2 REPS=1 SIZES=1,2 POP_TRAIN=512 AIR_SIZES=1,2 AIR_TRAIN=256 TRIALS=4 POP=2
  STUDY_ARGS=(--epochs 1 --train-size 1024 --val-size 1000)
  SCALE_ARGS=(--workers 1,2 --trials 2 --epochs 1 --train-size 512 --val-size 500 --reps 1)
  TRAIN_ARGS=(--model lenet --params '{"lr": 0.05}' --epochs 1 --train-size 1024 --val-size 1000)
else
  DEVICE=cuda WORKERS=4 LENET_BATCHES=1000 RESNETS=resnet18,resnet34 RESNET_BATCHES=200 REPS=3 SIZES=1,8,32,128 POP_TRAIN=50000 AIR_SIZES=1,8,32 AIR_TRAIN=10240 TRIALS=30 POP=32
  STUDY_ARGS=(--epochs 10)
  SCALE_ARGS=(--gpu --workers 1,4 --trials 8 --epochs 2 --train-size 0 --val-size 10000 --reps 1)
  TRAIN_ARGS=(--preset resnet18-tuned)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

# step NAME CAP_S COMMAND...: run under timeout min(CAP_S, what is left), record status and seconds.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < 15 )); then
    echo "== $name: skipped (budget spent)"; echo "$name skipped 0" >> "$OUT/steps.txt"; return
  fi
  local limit=$(( cap < left ? cap : left ))
  echo "== $name (at most ${limit} s)"
  local t0=$(date +%s%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local status=ok; (( rc == 124 )) && status=timeout; (( rc != 0 && rc != 124 )) && status="failed($rc)"
  echo "$name $status ${ms}ms" | tee -a "$OUT/steps.txt"
}

# merge NAME: fold OUT/NAME-more.json into OUT/NAME.json (a device run returns at most 8 files)
merge() {
  "$PY" - "$OUT/$1.json" "$OUT/$1-more.json" <<'PY'
import json, sys
from pathlib import Path
into, more = Path(sys.argv[1]), Path(sys.argv[2])
if more.exists():
    merged = json.loads(into.read_text()) if into.exists() else {}
    extra = json.loads(more.read_text())
    names = [k for k in extra if k != "hardware"]
    merged.update({k: extra[k] for k in names})
    if merged.setdefault("hardware", extra["hardware"]) != extra["hardware"]:  # e.g. another train size
        merged[f"hardware ({', '.join(names)})"] = extra["hardware"]
    into.write_text(json.dumps(merged, indent=2) + "\n")
    more.unlink()
PY
}

step "1 single-trial throughput, lenet" 60 "$PY" benchmarks/throughput.py --device "$DEVICE" --models lenet \
  --batches "$LENET_BATCHES" --reps "$REPS" --workers "$WORKERS" --json "$OUT/throughput.json"
step "1 single-trial throughput, $RESNETS" 90 "$PY" benchmarks/throughput.py --device "$DEVICE" \
  --models "$RESNETS" --batches "$RESNET_BATCHES" --reps "$REPS" --workers "$WORKERS" --json "$OUT/throughput-more.json"
merge throughput
step "2 population throughput, lenet" 90 "$PY" benchmarks/population.py --device "$DEVICE" \
  --models lenet --sizes "$SIZES" --train-size "$POP_TRAIN" --reps "$REPS" --json "$OUT/population.json"

for how in population sequential; do  # a TRIALS-trial LeNet study: a population at a time, then one trial at a time
  k=$([[ $how == population ]] && echo "$POP" || echo 1)
  # one trial at a time took more than 150 s on an H200 (2026-11-29): capped, its trial count is the figure
  step "3 ${TRIALS}-trial study, $how (--population $k)" $([[ $how == population ]] && echo 60 || echo 90) \
    "${CLI[@]}" run --model lenet --trials "$TRIALS" \
    --device "$DEVICE" --population "$k" --storage "sqlite:///$STORE/$how.db" --study "$how" "${STUDY_ARGS[@]}"
  timeout 60 "${CLI[@]}" export --study "$how" --storage "sqlite:///$STORE/$how.db" --all \
    --output "$OUT/study-$how.csv" || echo "export of $how failed"
done
# airbench: fewer images (its K = 1..32 sweep on 50,000 did not fit 120 s on an H200)
step "2 population throughput, airbench" 60 "$PY" benchmarks/population.py --device "$DEVICE" \
  --models airbench --sizes "$AIR_SIZES" --train-size "$AIR_TRAIN" --reps "$REPS" --json "$OUT/population-more.json"
merge population
step "5 accuracy: train ${TRAIN_ARGS[0]} ${TRAIN_ARGS[1]}" 120 "${CLI[@]}" train "${TRAIN_ARGS[@]}" --device "$DEVICE"
if [[ "${SMOKE:-0}" != 1 ]]; then  # CUDA graphs for one LeNet: compile time ~1 min
  step "6 single-trial lenet with CUDA graphs" 90 "$PY" benchmarks/throughput.py --device cuda --models lenet \
    --batches "$LENET_BATCHES" --reps "$REPS" --compile-mode reduce-overhead --json "$OUT/graphs.json"
fi
step "4 workers packed on one GPU" 60 "$PY" benchmarks/scale.py "${SCALE_ARGS[@]}" --json "$OUT/scale.json"
echo "== done in $(( $(date +%s) - START )) s"
