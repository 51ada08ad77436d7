"""The benchmark scripts run end to end (tiny sizes); their figures are recorded, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_throughput_script_shapes_its_json(tmp_path, real_data):
    import throughput

    out = tmp_path / "t.json"
    args = ["--models", "lenet", "--device", "cpu", "--batches", "3", "--reps", "1", "--json", str(out)]
    results = throughput.main(args)
    saved = json.loads(out.read_text())
    assert saved == results
    assert set(saved["lenet"]) == {"baseline", "ours", "ratio"}
    assert saved["lenet"]["baseline"] > 0 and saved["lenet"]["ours"] > 0
    assert saved["hardware"]["device"] == "cpu"


def test_search_efficiency_script(tmp_path, real_data):
    import search_efficiency

    results = search_efficiency.main(
        ["--pruners", "median", "--trials", "2", "--epochs", "1", "--train-size", "512", "--val-size", "500"]
    )
    assert results["none"]["epochs"] == 2  # 2 trials x 1 epoch, nothing to prune
    assert "epochs_ratio" in results["median"]


@pytest.mark.slow
def test_gpu_check_flow_on_cpu(tmp_path, real_data):
    """The GPU script's whole flow, with SMOKE=1 on the CPU: syntax, arguments, outputs."""
    env = {**os.environ, "SMOKE": "1", "PY": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== done" in (tmp_path / "gpu_check.log").read_text()
    assert json.loads((tmp_path / "throughput.json").read_text())["lenet"]["ratio"] > 0
    assert len((tmp_path / "gpu_check_lenet.csv").read_text().splitlines()) >= 2
    assert set(json.loads((tmp_path / "scale.json").read_text())) == {"1", "2", "protocol"}
    # A device run returns at most 8 plain files from its output folder: no databases, no weights.
    assert all(p.is_file() for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) <= 8
