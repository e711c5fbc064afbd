"""Starting or joining Ray so that every worker can import vilaray, on a laptop or a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import ray
import ray.data

import vilaray

# Environment every worker needs; nothing may be fetched from a hub at run time.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def runtime_env() -> dict:
    """Ship the vilaray package itself with the job, so cluster nodes need only the dependencies.

    Variables already in the driver's environment are left out: inside `ray job submit` they come from
    the job's runtime env, which already reaches every worker, and Ray refuses to merge two runtime envs
    that both set the same variable."""
    env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    out: dict = {"py_modules": [str(Path(vilaray.__file__).parent)]}
    if env:
        out["env_vars"] = env
    return out


# A local Ray advertises at least this many logical CPUs. Ray's CPUs are scheduling slots, not cores: a
# stage holds its train workers (0.5 each in the tiny recipe) plus one tokenizer actor per source
# (`data.encode_cpus` each) for the whole stream, which on a 2-core laptop would not fit in 2 slots
# although the processes take turns on the cores. A cluster's nodes declare their own CPUs.
LOCAL_LOGICAL_CPUS = 8


def local_cpus(requested: float | None = None) -> float:
    """Logical CPUs of a local Ray: `requested`, else the machine's cores, and never fewer than 8."""
    return requested if requested is not None else float(max(LOCAL_LOGICAL_CPUS, os.cpu_count() or 1))


def local_ray_env(cpus: float) -> dict[str, str]:
    """What a local Ray's processes inherit unless the user set it (a cluster's nodes set their own)."""
    return {
        # The raylet starts at most min(cores, CPUs) workers at once and prints a warning to the console
        # each time a job has started 4x, 6x... that many; a stage's actors (tokenizers, train workers,
        # ledger, controller) always would on a laptop. Start up to one per logical CPU instead.
        "RAY_worker_maximum_startup_concurrency": str(int(cpus)),
        # Ray Train's controller polls its workers every 2 s by default: each stage's start, each checkpoint
        # report and its end wait for a poll.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        # One machine has no node to lose to preemption: no watcher actor per stage (a process of its own,
        # a few CPU-seconds of imports each on a 2-core laptop).
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    }


# What a job's console needs of Ray: no line for every task it is about to retry (e.g. a tokenizer actor's
# call cut short when a `--max-rows` prepare stops its pool); the retry's outcome is still reported if it fails.
JOB_ENV = {"RAY_enable_output_error_log_if_still_retry": "0"}

# Every variable vilaray sets for a Ray it starts itself (a test's "user shell" leaves them all out).
VILARAY_RAY_VARS = (*local_ray_env(1), *JOB_ENV)


def init_ray(address: str | None = None, num_cpus: float | None = None, **kwargs) -> None:
    """Join the cluster at `address` / RAY_ADDRESS (e.g. inside `ray job submit`), else start a local Ray
    with `local_cpus(num_cpus)` logical CPUs."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env(), **kwargs)
    else:
        cpus = local_cpus(num_cpus)
        for key, value in local_ray_env(cpus).items():
            os.environ.setdefault(key, value)
        ray.init(
            address="local",
            num_cpus=cpus,
            runtime_env=runtime_env(),
            include_dashboard=kwargs.pop("include_dashboard", False),
            **kwargs,
        )


def init_job(run_dir: Path, address: str | None = None, num_cpus: float | None = None, **kwargs) -> Path:
    """A job's Ray with a console for people: Ray's driver logs and warnings in `<run_dir>/logs`, workers'
    output left in Ray's session logs (linked there) instead of forwarded; returns the logs folder."""
    from vilaray.console import link_ray_session_logs, quiet_console

    folder = quiet_console(run_dir)
    for key, value in JOB_ENV.items():
        os.environ.setdefault(key, value)
    init_ray(address, num_cpus=num_cpus, log_to_driver=False, **kwargs)
    link_ray_session_logs(run_dir)
    # No Ray Data progress bars or execution banners: vilaray prints its own statistics, and on 2 cores
    # redrawing bars costs CPU.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    return folder
