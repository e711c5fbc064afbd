"""`ray job submit --working-dir . -- python jobs/pretrain.py ...` against a `ray start --head` cluster whose
Python cannot import vilaray: the job must ship the library in its runtime environment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def cluster_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def stop_cluster(head: subprocess.Popen, temp_dir: Path) -> None:
    """Stop only this cluster's processes (`ray stop` would kill every Ray on the machine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    mine = str(temp_dir)
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(mine in part for part in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_job_submit_ships_vilaray_to_a_cluster_without_it(tmp_path, world_dir, assets_dir):
    env = cluster_env()
    probe = subprocess.run(
        [sys.executable, "-c", "import vilaray"], env=env, cwd=tmp_path, capture_output=True
    )
    assert probe.returncode != 0, "this test needs a Python where vilaray is not installed (see Makefile)"

    temp_dir = Path("/tmp") / f"vr-{os.getpid()}"  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    # Every port of its own: the test session's Ray already holds the defaults (e.g. the agent's 52365).
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        )
    ]  # fmt: skip
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--include-dashboard=true", f"--temp-dir={temp_dir}", "--num-cpus=4", "--disable-usage-stats", *ports],
        env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while subprocess.run([str(BIN / "ray"), "job", "list", f"--address={address}"], env=env,
                             capture_output=True).returncode:  # fmt: skip
            assert time.time() < deadline, "the head node did not come up"
            time.sleep(0.5)
        overrides = {
            "model.path": str(assets_dir),
            "defaults.data.root": str(world_dir),
            "defaults.data.encode_cpus": 0.5,
            "run_root": str(tmp_path / "runs"),
            "stages.align.train.max_steps": 2,
            "stages.align.train.num_workers": 1,
            "stages.align.train.checkpoint_every": 2,
        }
        runtime_env = {"excludes": [".venv", ".git", "/artifacts", "/runs", "__pycache__"]}
        cmd = [str(BIN / "ray"), "job", "submit", f"--address={address}", "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/pretrain.py",
               "--recipe", "jobs/recipes/tiny.yaml", "--stage", "align"]  # fmt: skip
        for k, v in overrides.items():
            cmd += ["--set", f"{k}={v}"]
        for _ in range(120):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            logs = out.stdout + out.stderr
            # The head answers before its job agent has registered; submitting then is refused.
            if "No available agent to submit job" not in logs:
                break
            time.sleep(0.5)
        assert out.returncode == 0, logs[-4000:]
        assert "succeeded" in logs
        # Workers imported vilaray from the job's runtime environment, not from an installed package.
        assert "workers import vilaray from" in logs and "runtime_resources" in logs, logs[-4000:]
        assert (tmp_path / "runs" / "tiny" / "align" / "export" / "config.json").is_file()
    finally:
        stop_cluster(head, temp_dir)
