#!/usr/bin/env bash
# Run HERE (the CPU machine, with `make` done) before a session's GPU run: the GPU machine
# has python3 3.12 with torch, torchvision, typer, rich, pandas, scipy, but no Optuna and
# no internet, and the data beside this checkout does not travel. This puts what it lacks
# into two git-ignored folders (~35 MB, under the 64 MiB a run carries):
#   .whl/       Optuna and its missing dependencies, as CPython 3.12 x86-64 wheels
#   .gpu-data/  the four verified Fashion-MNIST files
# Then one device run (carry [".whl", ".gpu-data"]) does everything:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:$PWD PY=python3 FMNIST_DATA_DIR=.gpu-data ACCURACY=1 \
#   bash benchmarks/gpu_check.sh $OUT
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .whl .gpu-data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "optuna==$("$PY" -c 'import optuna; print(optuna.__version__)')" \
  "sqlalchemy==$("$PY" -c 'import sqlalchemy; print(sqlalchemy.__version__)')" \
  "alembic==$("$PY" -c 'import alembic; print(alembic.__version__)')" \
  colorlog mako
mkdir -p .gpu-data
"$PY" - <<'PY'
import gzip, shutil
from fmnist_search.engine import data
location, _ = data.verified_files(allow_download=False)  # checks every file's SHA-256 first
for name, path in location.files.items():
    if path.suffix == ".gz":
        shutil.copy(path, f".gpu-data/{name}.gz")
    else:  # gzip the raw files: 55 MB -> 30 MB of the 64 MiB a run carries
        with open(path, "rb") as src, gzip.open(f".gpu-data/{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    print("copied", path)
PY
du -sh .whl .gpu-data
