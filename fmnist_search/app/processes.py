"""Worker processes on this machine: planned, started, relayed a signal, and named back to the user.

`run --jobs N` / `--gpus` starts one `fmnist-search worker` process per plan, passes its work
options as argv built from their one declaration (``as_argv``), relays Ctrl-C and SIGTERM to
them and waits. After a stop, ``finish_command`` is the command that finishes the study.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.config import DEFAULT_STORAGE
from ..core.errors import Stopped
from ..core.interrupts import Stop, check, cleaning
from ..search.store import mask_url
from .lines import store_text

if TYPE_CHECKING:  # annotations only
    from .options import StudyOptions, WorkOptions

EXIT_FAILED = 1  # the work could not go on (a lost store, a failed worker)
RUN_REPORTS = "FMNIST_RUN_REPORTS"  # set for the workers of `run --jobs`: a stop is said once, by the run
Say = Callable[[str], None]


def signal_name(signum: int) -> str:

    return signal.Signals(signum).name


def as_argv(options: StudyOptions | WorkOptions, changed_only: bool = False) -> list[str]:
    """An option group back as the command line that gives it: how `run` passes its
    options to the `worker` processes it starts, derived from the one declaration
    (``changed_only``: the options that differ from their defaults, for a command shown to a user)."""
    argv: list[str] = []
    for f in dataclasses.fields(options):
        value, flag = getattr(options, f.name), "--" + f.name.replace("_", "-")
        if changed_only and value == f.default:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def finish_command(name: str, url: str, work: WorkOptions) -> str:
    """The command that finishes study ``name`` (its target, retries first) with the same work
    options: `worker` runs until the study has the trials it was asked for, and adds none."""

    storage = [] if url == DEFAULT_STORAGE else ["--storage", mask_url(url)]
    if work.artifacts is not None and work.artifacts == dataclasses.replace(work, artifacts=None).artifact_dir(url):
        work = dataclasses.replace(work, artifacts=None)  # the store's own folder, as a worker of `run --jobs` is told
    return " ".join(["fmnist-search", "worker", "--study", name, *storage, *as_argv(work, changed_only=True)])


def trial_count(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")


def spawn_workers(plans: list[WorkerPlan], name: str, url: str, work: WorkOptions, target: int, say: Say) -> None:
    """Start one `fmnist-search worker` process per plan and wait for all of them.

    The storage URL travels in the environment, not argv, so its password never shows in `ps`.
    """

    say(f"study {name!r} in {store_text(url)}: {len(plans)} workers until {trial_count(target)}")
    # The storage URL and data folder travel in the environment (the password stays out of `ps`).
    shared = dataclasses.replace(work, data_dir=None, artifacts=work.artifact_dir(url))
    procs: list[tuple[Any, subprocess.Popen]] = []
    try:
        for plan in plans:
            env = {**os.environ, **plan.env, "FMNIST_STORAGE": url, RUN_REPORTS: "1"}
            if work.data_dir is not None:
                env["FMNIST_DATA_DIR"] = str(work.data_dir)
            mine = (
                shared
                if plan.device is None or work.device != "auto"
                else dataclasses.replace(shared, device=plan.device)
            )
            args = ["worker", "--study", name, "--label", plan.label, "--no-bars", *as_argv(mine)]
            procs.append((plan, subprocess.Popen([sys.executable, "-m", "fmnist_search", *args], env=env)))
        while any(p.poll() is None for _, p in procs):
            check()
            time.sleep(0.5)
    except KeyboardInterrupt as e:
        stop = e if isinstance(e, Stop) else Stop()
        with cleaning():  # relay the signal (a terminal's Ctrl-C reached them already), then wait
            for _, p in procs:
                if p.poll() is None:
                    p.send_signal(stop.signum)
            for _, p in procs:
                try:
                    p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    p.kill()  # its trial is retried once its heartbeat is stale
        raise Stopped(
            f"interrupted by {signal_name(stop.signum)}; the workers re-queued their trials; finished trials are "
            f"stored in {store_text(url)}; finish the study's {trial_count(target)} with one or more of: "
            f"{finish_command(name, url, work)}",
            stop.exit_code,
        ) from None
    failed = []
    for plan, p in procs:
        if p.returncode < 0:
            say(f"worker {plan.label} was killed by signal {-p.returncode}; its trial was retried by the others")
        elif p.returncode != 0:
            failed.append(f"{plan.label} (exit {p.returncode})")
    if failed:
        raise Stopped(f"worker(s) failed: {', '.join(failed)}; see their errors above", EXIT_FAILED)


@dataclass(frozen=True)
class WorkerPlan:
    """One local worker process: its label, extra environment, and device."""

    label: str
    env: dict[str, str]
    device: str | None  # None: the run's --device


def plan_workers(jobs: int, gpus: list[str] | None, workers_per_gpu: int, cpu_count: int) -> list[WorkerPlan]:
    """``--gpus 0,1 --workers-per-gpu 2`` -> 4 workers, each seeing one GPU as cuda:0.

    Workers split the cores between them (OMP_NUM_THREADS, and inductor's compile threads)
    instead of each taking all: GPU workers use them for the host side and torch.compile.
    """
    if gpus:
        plans = [(f"gpu{g}-{k}", {"CUDA_VISIBLE_DEVICES": g}, "cuda") for g in gpus for k in range(workers_per_gpu)]
    else:
        plans = [(f"w{i}", {}, None) for i in range(jobs)]
    threads = str(max(1, cpu_count // len(plans)))
    return [
        WorkerPlan(label, {**env, "OMP_NUM_THREADS": threads, "TORCHINDUCTOR_COMPILE_THREADS": threads}, device)
        for label, env, device in plans
    ]
