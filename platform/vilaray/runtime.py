"""Starting or joining Ray so that every worker can import vilaray, on a laptop or a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import ray

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


def init_ray(address: str | None = None, num_cpus: float | None = None, **kwargs) -> None:
    """Join the cluster at `address` / RAY_ADDRESS (e.g. inside `ray job submit`), else start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env(), **kwargs)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            runtime_env=runtime_env(),
            include_dashboard=kwargs.pop("include_dashboard", False),
            **kwargs,
        )
