"""docker/ cannot run here: parse its files and check every fmnist-search command in them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
import yaml

from fmnist_search.cli import app

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")  # compose: ${VAR:-default}
K8S_VAR = re.compile(r"\$\((\w+)\)")  # kubernetes: $(VAR)


def check_cli(args: list[str]) -> str:
    """Parse ``args`` exactly as `fmnist-search ARGS` would, without running; return the command."""
    args = [K8S_VAR.sub("0", ENV_DEFAULT.sub(r"\2", a)) for a in args]
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


def test_dockerfile_runs_a_valid_worker():
    text = (DOCKER / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry == ["fmnist-search"]
    assert check_cli(cmd) == "worker"
    assert "dataset-fashion-mnist" in text and "[postgres]" in text


def test_compose_services_run_valid_commands():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    commands = {name: check_cli(s["command"]) for name, s in services.items() if "command" in s}
    assert commands == {"create": "create", "dashboard": "dashboard", "worker-gpu0": "worker", "worker-gpu1": "worker"}
    assert {"postgres"} == {services["db"]["image"].split(":")[0]}
    for name in ("worker-gpu0", "worker-gpu1"):
        assert services[name]["environment"]["FMNIST_STORAGE"].startswith("postgresql://")
        gpu = services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        assert gpu == [name[-1]]  # one GPU per worker


def test_k8s_example_runs_valid_commands():
    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Secret", "Deployment", "Service", "Job", "Job"]
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    for job in jobs.values():
        container = job["spec"]["template"]["spec"]["containers"][0]
        check_cli(container["args"])
    workers = jobs["fmnist-workers"]["spec"]
    assert workers["completionMode"] == "Indexed" and workers["parallelism"] == workers["completions"]
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["args"][0] == "worker" and worker["resources"]["limits"]["nvidia.com/gpu"] == 1
