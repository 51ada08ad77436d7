#!/usr/bin/env bash
# Every GPU figure in one run of under 8 minutes on an H200, most important first, for a
# borrowed GPU machine (a hard budget: ~15 minutes of device time in all, at most 10 per command).
# Installs nothing: run it from the repo root with the project's venv, or on the lent GPU
# machine after benchmarks/gpu_prepare.sh here (its header has the one device command).
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh OUT_DIR    # the same flow on the CPU, tiny sizes (a test runs it)
#
# The order is the order of what is missing: (1) the report's whole table (`run --preset
# seed-report`, all three models, then `report`): its ResNet rows have never been measured;
# (2) the main job end to end at the default population (refilled; its time in steps.txt, its
# occupancy line in gpu_check.log); (3) the ResNet presets' accuracy; (4) the speed table, with
# the training step as a CUDA graph (`--cuda-graphs`: its replay-equals-eager tests first);
# (5) where start-up goes; (6) the `compare` preset's front, if time is left; (7) the rung
# figure's rank correlation with the end on more seeds (benchmarks/fidelity.py: its table in
# gpu_check.log; the CPU's airbench recordings lack the raw weights on seeds 21 and 23).
# Each step runs under its own `timeout`, capped by what is left of the whole budget
# (BUDGET_S, 450 s); a failed or timed-out step does not stop the rest. Each figure lands in
# OUT_DIR as soon as it is measured (at most 8 files, what a device run returns):
# gpu_check.log (everything printed, the ResNet presets' test accuracy too), steps.txt (each
# step: status, seconds), report.md, main-job.csv, throughput.json, population.json,
# startup.json, compare.md. The studies' SQLite files and weights stay in a temporary folder.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
CLI=("$PY" -m fmnist_search)
STORE=$(mktemp -d)
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
# A CPU smoke run (SMOKE=1) checks the flow, not a device's timing: no budget or caps unless
# BUDGET_S is given (a test gives 0 to see every step skipped)
if [[ "${SMOKE:-0}" == 1 ]]; then BUDGET_S=${BUDGET_S:-86400}; else BUDGET_S=${BUDGET_S:-450}; fi

if [[ "${SMOKE:-0}" == 1 ]]; then  # ResNets on 2 CPU cores take minutes a step: airbench stands in
  DEVICE=cpu WORKERS=0 LENET_BATCHES=3 RESNETS=airbench RESNET_BATCHES=2 REPS=1 SIZES=1,2 POP_TRAIN=512
  SEED_ARGS=(--models lenet --epochs 1 --train-size 512 --val-size 500)
  MAIN_ARGS=(--trials 3 --epochs 1 --train-size 1024 --val-size 1000)
  PRESETS=(airbench-tuned) PRESET_ARGS=(--epochs 1 --train-size 512 --val-size 500 --no-full-train)
  COMPARE_ARGS=(--model lenet,airbench --trials 2 --epochs 1 --train-size 512 --val-size 500)
  FIDELITY_ARGS=(--models airbench --seeds 21 --trials 3 --epochs 2 --train-size 512 --val-size 500 --no-tta)
else
  DEVICE=cuda WORKERS=4 LENET_BATCHES=1000 RESNETS=resnet18,resnet34 RESNET_BATCHES=200 REPS=3 SIZES=1,8,32,128 POP_TRAIN=50000
  SEED_ARGS=()
  MAIN_ARGS=(--trials 30)
  PRESETS=(resnet18-tuned resnet34-tuned) PRESET_ARGS=()
  COMPARE_ARGS=(--trials 24)
  # the CPU recordings' protocol (docs/results.md, "Rungs that see the end"), on the seeds whose
  # raw weights it lacks, with a 1-epoch half-life beside the two it has
  FIDELITY_ARGS=(--models airbench --seeds 21,23 --trials 8 --train-size 5000 --val-size 2500 --no-tta
    --halflives 0.5 1 2)
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
  [[ "${SMOKE:-0}" == 1 ]] && cap=$left
  local limit=$(( cap < left ? cap : left ))
  echo "== $name (at most ${limit} s)"
  local t0=$(date +%s%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local status=ok; (( rc == 124 )) && status=timeout; (( rc != 0 && rc != 124 )) && status="failed($rc)"
  echo "$name $status ${ms}ms" | tee -a "$OUT/steps.txt"
}

# merge NAME [PREFIX]: fold OUT/NAME-more.json into OUT/NAME.json, its keys prefixed (a device
# run returns at most 8 files)
merge() {
  "$PY" - "$OUT/$1.json" "$OUT/$1-more.json" "${2:-}" <<'PY'
import json, sys
from pathlib import Path
into, more, prefix = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if more.exists():
    merged = json.loads(into.read_text()) if into.exists() else {}
    extra = {(k if k == "hardware" else prefix + k): v for k, v in json.loads(more.read_text()).items()}
    names = [k for k in extra if k != "hardware"]
    merged.update({k: extra[k] for k in names})
    if merged.setdefault("hardware", extra["hardware"]) != extra["hardware"]:  # e.g. another train size
        merged[f"hardware ({', '.join(names)})"] = extra["hardware"]
    into.write_text(json.dumps(merged, indent=2) + "\n")
    more.unlink()
PY
}

SEED="sqlite:///$STORE/seed-report.db"
step "1 the report's table: run --preset seed-report" 270 "${CLI[@]}" run --preset seed-report \
  --device "$DEVICE" --storage "$SEED" "${SEED_ARGS[@]}"
studies=$("$PY" -c 'import optuna, sys; print(" ".join(f"--study {s.study_name}" for s in
  optuna.get_all_study_summaries(sys.argv[1], include_best_trial=False)))' "$SEED" 2>/dev/null)
# shellcheck disable=SC2086  # one word per option
timeout 60 "${CLI[@]}" report $studies --storage "$SEED" --output "$OUT/report.md" || echo "report failed"
step "2 the main job: run --model lenet ${MAIN_ARGS[*]}" 90 "${CLI[@]}" run --model lenet --device "$DEVICE" \
  --storage "sqlite:///$STORE/main.db" "${MAIN_ARGS[@]}"
timeout 60 "${CLI[@]}" export --study lenet --storage "sqlite:///$STORE/main.db" --all \
  --output "$OUT/main-job.csv" || echo "export failed"
for preset in "${PRESETS[@]}"; do  # test accuracy of the recipe, chosen on validation: the log's last lines
  step "3 accuracy: train --preset $preset" 150 "${CLI[@]}" train --preset "$preset" --device "$DEVICE" \
    "${PRESET_ARGS[@]}"
done
step "4 single-trial throughput, lenet" 60 "$PY" benchmarks/throughput.py --device "$DEVICE" --models lenet \
  --batches "$LENET_BATCHES" --reps "$REPS" --workers "$WORKERS" --json "$OUT/throughput.json"
step "4 single-trial throughput, $RESNETS" 90 "$PY" benchmarks/throughput.py --device "$DEVICE" \
  --models "$RESNETS" --batches "$RESNET_BATCHES" --reps "$REPS" --workers "$WORKERS" --json "$OUT/throughput-more.json"
merge throughput
step "4 population throughput, lenet" 90 "$PY" benchmarks/population.py --device "$DEVICE" \
  --models lenet --sizes "$SIZES" --train-size "$POP_TRAIN" --reps "$REPS" --json "$OUT/population.json"
# the step as a CUDA graph (--cuda-graphs): first that replay equals the eager step, then its speed
step "4 CUDA graphs: replay equals eager (tests/test_graphs.py)" 120 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_graphs.py
step "4 single-trial throughput, lenet, CUDA graphs" 60 "$PY" benchmarks/throughput.py --device "$DEVICE" \
  --models lenet --batches "$LENET_BATCHES" --reps "$REPS" --workers "$WORKERS" --cuda-graphs \
  --json "$OUT/throughput-more.json"
merge throughput "graphs "
step "4 population throughput, lenet, CUDA graphs" 90 "$PY" benchmarks/population.py --device "$DEVICE" \
  --models lenet --sizes "$SIZES" --train-size "$POP_TRAIN" --reps "$REPS" --cuda-graphs --json "$OUT/population-more.json"
merge population "graphs "
step "5 start-up breakdown" 60 "$PY" benchmarks/startup.py --device "$DEVICE" --reps 2 --json "$OUT/startup.json"
COMPARE="sqlite:///$STORE/compare.db"
step "6 the compare preset's front" 300 "${CLI[@]}" run --preset compare --device "$DEVICE" --storage "$COMPARE" \
  "${COMPARE_ARGS[@]}"
timeout 60 "${CLI[@]}" report --study compare --storage "$COMPARE" --output "$OUT/compare.md" || echo "no front"
step "7 the rung figure: fidelity.py" 240 "$PY" benchmarks/fidelity.py --device "$DEVICE" "${FIDELITY_ARGS[@]}" \
  --out "$STORE/fidelity"
echo "== done in $(( $(date +%s) - START )) s"
