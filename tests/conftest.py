"""Session fixtures: one generated shapes world, one set of tiny assets, one local Ray for the whole run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "jobs"))


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    from vilaray.synth.world import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, scale="tiny")
    return out


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory) -> Path:
    """The demo-sized world: files big enough that Ray Data tasks carry real work (mixing tests)."""
    from vilaray.synth.world import build_world

    out = tmp_path_factory.mktemp("world_small")
    build_world(out, seed=0, scale="small")
    return out


@pytest.fixture(scope="session")
def small_assets_dir(small_world_dir, tmp_path_factory) -> Path:
    """The demo's tiny assets: tokenizer trained on the demo-sized world's text, pretrained tower."""
    from vilaray.synth.assets import build_assets

    return build_assets(small_world_dir, tmp_path_factory.mktemp("small_assets"))


@pytest.fixture(scope="session")
def assets_dir(world_dir, tmp_path_factory) -> Path:
    from vilaray.synth.assets import build_assets

    return build_assets(world_dir, tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def tokenizer(assets_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(assets_dir))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical CPUs above the 2 real ones: train workers take fractions, Ray Data actors still schedule.
    # Workers import test modules too (train loops defined in tests are pickled by reference).
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


def base_recipe(world_dir: Path, assets_dir: Path, run_root: Path, **data) -> dict:
    """A recipe dict over the tiny world: pairs + interleaved + text, overridable per test."""
    recipe = {
        "name": "test",
        "model": {"path": str(assets_dir)},
        "run_root": str(run_root),
        "data": {
            "root": str(world_dir),
            "sources": {
                "pairs": {"format": "pairs_parquet", "paths": ["pairs"]},
                "interleaved": {"format": "obelics_parquet", "paths": ["obelics"]},
                "text": {"format": "text_jsonl", "paths": ["text"], "epochs": 4},
            },
            "mix": {"pairs": 0.45, "interleaved": 0.45, "text": 0.10},
            "seq_len": 512,
            "pack_window": 64,
        },
    }
    recipe["data"].update(data)
    return recipe
