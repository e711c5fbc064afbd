"""Run provenance: resolved recipe, code revision, package versions, seeds and a fingerprint of the data."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

import pyarrow.fs as pafs

import vilaray

PACKAGES = ("torch", "transformers", "deepspeed", "ray", "peft", "pyarrow", "tokenizers")


def git_revision() -> str:
    """The checkout's commit (with `-dirty` if it has local changes), or "unknown" (e.g. a job's working
    dir shipped without .git)."""
    root = Path(vilaray.__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    out = {"vilaray": vilaray.__version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def data_fingerprint(shard_paths: list[str]) -> str:
    """Hash of every planned data file's path, size and modification time: cheap, and it changes when a
    file is replaced or rewritten."""
    from vilaray.data.readers.base import filesystem

    h = hashlib.sha256()
    for path in sorted(set(shard_paths)):
        fs, inner = filesystem(path)
        info = fs.get_file_info(inner)
        mtime = info.mtime_ns if info.type != pafs.FileType.NotFound else None
        h.update(f"{path}\0{info.size}\0{mtime}\n".encode())
    return h.hexdigest()


def provenance(recipe: dict, stage: str, seeds: dict, shard_paths: list[str]) -> dict:
    return {
        "stage": stage,
        "git_revision": git_revision(),
        "versions": versions(),
        "seeds": seeds,
        "data_fingerprint": data_fingerprint(shard_paths),
        "data_files": len(set(shard_paths)),
        "recipe": recipe,
    }
