"""docker/ cannot run here: parse its files and check every fmnist-search command in them."""

from __future__ import annotations

import json
import re
import socket
import sys
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from fmnist_search.cli import app

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")  # compose: ${VAR:-default}
ENV_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")  # compose: ${VAR:?message}, no default
K8S_VAR = re.compile(r"\$\((\w+)\)")  # kubernetes: $(VAR)


def check_cli(args: list[str]) -> str:
    """Parse ``args`` exactly as `fmnist-search ARGS` would, without running; return the command."""
    args = [K8S_VAR.sub("0", ENV_REQUIRED.sub("x", ENV_DEFAULT.sub(r"\2", a))) for a in args]
    group = typer.main.get_command(app)
    name, rest = args[0], args[1:]  # the app has no options of its own: the command comes first
    with group.make_context("fmnist-search", list(args)) as ctx:
        cmd = group.get_command(ctx, name)
        if cmd is None:
            raise LookupError(f"No such command {name!r}")
        cmd.make_context(name, rest, parent=ctx)  # raises a usage error on a bad option or value
    return name


def test_check_cli_rejects_bad_commands():
    with pytest.raises(Exception, match="No such option"):
        check_cli(["worker", "--studdy", "x"])
    with pytest.raises(Exception, match="No such command"):
        check_cli(["launch"])
    with pytest.raises(Exception, match="valid integer"):
        check_cli(["create", "--model", "lenet", "--trials", "${TRIALS:-many}"])
    with pytest.raises(Exception, match="Missing parameter: study"):
        check_cli(["worker"])


def test_dockerfile_runs_a_valid_gpu_worker_with_presets_and_a_compiler():
    text = (DOCKER / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry == ["fmnist-search"]
    assert check_cli(cmd) == "worker" and _device(cmd) == "cuda"
    packages = re.search(r"apt-get install -y --no-install-recommends ([^\n&]+)", text).group(1).split()
    assert {"dataset-fashion-mnist", "gcc", "libc6-dev"} <= set(packages)  # Triton needs a C compiler
    assert "COPY fmnist_search ./fmnist_search" in text and "[postgres]" in text
    assert re.search(r"^ENV XDG_CACHE_HOME=/cache$", text, re.M)
    # The presets travel as package data: pip install . of this source puts them in the image.
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    assert "presets/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["fmnist_search"]
    assert {p.name for p in (DOCKER.parent / "fmnist_search" / "presets").glob("*.toml")} >= {"seed-report.toml"}


def _device(args: list[str]) -> str | None:
    return args[args.index("--device") + 1] if "--device" in args else None


def test_compose_services_run_valid_commands_safely():
    text = (DOCKER / "compose.yaml").read_text()
    assert ":-fmnist" not in text and "change-me" not in text.split("\n", 3)[-1]  # no default password
    compose = yaml.safe_load(text)
    services = compose["services"]
    commands = {name: check_cli(s["command"]) for name, s in services.items() if "command" in s}
    assert commands == {"create": "create", "dashboard": "dashboard", "worker-gpu0": "worker", "worker-gpu1": "worker"}
    # every `docker compose up` re-runs create: an absolute target, so a restart adds no trials
    assert "--target" in services["create"]["command"] and "--trials" not in services["create"]["command"]
    assert {"postgres"} == {services["db"]["image"].split(":")[0]}
    db_env = services["db"]["environment"]
    assert ENV_REQUIRED.fullmatch(db_env["POSTGRES_PASSWORD"]) and ENV_REQUIRED.fullmatch(db_env["DASHBOARD_PASSWORD"])
    assert "./initdb:/docker-entrypoint-initdb.d:ro" in services["db"]["volumes"]
    for name in ("worker-gpu0", "worker-gpu1"):
        worker = services[name]
        url = worker["environment"]["FMNIST_STORAGE"]
        assert url.startswith("postgresql://fmnist:") and ENV_REQUIRED.search(url)
        assert _device(worker["command"]) == "cuda"
        assert "cache:/cache" in worker["volumes"]  # one teacher cache for all workers
        # one artifact store: a re-queued trial resumes on any worker, weights outlive containers
        assert "artifacts:/artifacts" in worker["volumes"] and worker["environment"]["FMNIST_ARTIFACTS"] == "/artifacts"
        gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert gpu == [name[-1]]  # one GPU per worker
    dashboard = services["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]  # this host only
    assert dashboard["environment"]["FMNIST_STORAGE"].startswith("postgresql://fmnist_reader:")  # read-only role
    assert (
        dashboard["environment"]["FMNIST_ARTIFACTS"] == "/artifacts"
        and "artifacts:/artifacts:ro" in dashboard["volumes"]
    )  # the dashboard serves the workers' weights
    assert {"cache", "artifacts"} <= set(compose["volumes"])


def test_k8s_example_runs_valid_commands_and_ships_no_password():
    text = (DOCKER / "k8s.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "Job",
        "Job",
    ]  # no Secret
    claims = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"fmnist-cache": ["ReadWriteMany"], "fmnist-artifacts": ["ReadWriteMany"]}  # shared by all pods
    assert "kubectl create secret generic fmnist-db" in text
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    for job in jobs.values():
        container = job["spec"]["template"]["spec"]["containers"][0]
        check_cli(container["args"])
    create = jobs["fmnist-create"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--target" in create and "--trials" not in create  # a Job retried after its write adds no trials
    workers = jobs["fmnist-workers"]["spec"]
    assert workers["completionMode"] == "Indexed" and workers["parallelism"] == workers["completions"]
    # Per-index retries: a slow database or one bad node cannot fail the whole Job.
    assert "backoffLimit" not in workers and workers["backoffLimitPerIndex"] >= 1
    assert workers["template"]["spec"]["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["args"][0] == "worker" and _device(worker["args"]) == "cuda"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["volumeMounts"] == [
        {"name": "cache", "mountPath": "/cache"},
        {"name": "artifacts", "mountPath": "/artifacts"},
    ]
    assert {"name": "FMNIST_ARTIFACTS", "value": "/artifacts"} in worker["env"]
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in workers["template"]["spec"]["volumes"]}
    assert volumes == {"cache": "fmnist-cache", "artifacts": "fmnist-artifacts"}


def test_the_dashboard_role_reads_but_cannot_delete(postgres_url, tmp_path):
    """docker/initdb's read-only role, on a real PostgreSQL: the dashboard lists studies, a DELETE fails."""
    import os
    import subprocess
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    import optuna

    from fmnist_search.search.store.storage import make_storage

    owner = urlsplit(postgres_url)
    env = {
        **os.environ,
        "POSTGRES_USER": "fmnist",
        "POSTGRES_DB": "fmnist-ro",
        "DASHBOARD_PASSWORD": "ro-pw",
        "PGHOST": owner.hostname,
        "PGPORT": str(owner.port),
    }
    subprocess.run(["createdb", "-U", "fmnist", "fmnist-ro"], env=env, check=True, capture_output=True)
    done = subprocess.run(["sh", str(DOCKER / "initdb" / "10-dashboard-reader.sh")], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    owner_url = postgres_url.rsplit("/", 1)[0] + "/fmnist-ro"
    optuna.create_study(study_name="kept", storage=make_storage(owner_url, heartbeat=False)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    reader_url = f"postgresql://fmnist_reader:ro-pw@{owner.hostname}:{owner.port}/fmnist-ro"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmnist_search",
            "dashboard",
            "--storage",
            reader_url,
            "--port",
            str(port),
            "--artifacts",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        studies = _get_json(f"{base}/api/studies", proc)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["kept"]
        request = urllib.request.Request(f"{base}/api/studies/{studies[0]['study_id']}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    kept = optuna.load_study(study_name="kept", storage=make_storage(owner_url, heartbeat=False))
    assert len(kept.trials) == 2  # the read-only role could not delete it


def _get_json(url: str, proc) -> dict:
    import time
    import urllib.request

    deadline = time.time() + 120  # start-up imports torch; CI machines are busy
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"dashboard did not come up: {proc.stdout.read() if proc.poll() is not None else 'still starting'}")
