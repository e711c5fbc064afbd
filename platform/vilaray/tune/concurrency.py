"""How many trials a cluster runs at once: what one trial holds (train workers, tokenizer actors, its driver)
against the cluster's real CPUs and GPUs, not the logical CPUs a local Ray may advertise."""

from __future__ import annotations

import math
import os

from vilaray.config import Recipe


def trial_needs(
    recipe: Recipe, stages: list[str], driver_cpus: float = 0.0, evaluates: bool = False
) -> dict[str, float]:
    """The most any one of a trial's stages holds at a time: every train worker's CPUs/GPUs plus one
    tokenizer actor per weighted source (streaming mode; a deterministic stage prepares before training);
    after them, `evaluates`: the harness's inference actor (one CPU; one GPU where training had them)."""
    cpus, gpus = 0.0, 0.0
    for name in stages:
        st = recipe.stages[name]
        t, d = st.train, st.data
        stream = len(d.weights()) * d.encode_cpus if t.data_mode == "streaming" else 0.0
        cpus = max(cpus, t.num_workers * t.cpus_per_worker + stream)
        gpus = max(gpus, float(t.num_workers if t.use_gpu else 0))
    if evaluates:  # its one GPU (where training had them) is within the stages' already
        cpus = max(cpus, 1.0)
    return {"CPU": cpus + driver_cpus, "GPU": gpus}


def max_concurrent_trials(cluster: dict[str, float], trial: dict[str, float]) -> int:
    """Trials that fit side by side in `cluster` (its real resources), at least one.

    A trial that asks for no GPU is still bounded by CPUs, and a CPU-only machine with 2 cores runs one
    trial at a time even when its local Ray advertises more logical CPUs."""
    fits = []
    for key in ("CPU", "GPU"):
        need = trial.get(key, 0.0)
        if need > 0:
            fits.append(math.floor(cluster.get(key, 0.0) / need + 1e-9))
    return max(1, min(fits) if fits else 1)


def real_resources() -> dict[str, float]:
    """The cluster's physical CPUs and GPUs: every alive node's, on a cluster; this machine's cores (not
    the local Ray's logical CPUs) otherwise."""
    import ray

    if ray.is_initialized():
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1:
            total = ray.cluster_resources()
            return {"CPU": float(total.get("CPU", 0.0)), "GPU": float(total.get("GPU", 0.0))}
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
    else:
        gpus = 0.0
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": gpus}
