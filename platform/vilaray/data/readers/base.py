"""Reader protocol, shard descriptors and filesystem helpers shared by every format reader."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pyarrow.fs as pafs

from vilaray.data.sample import Reject, SourceError


@dataclass(frozen=True)
class Shard:
    """One unit of reading work (a file, or one row group of a Parquet file); Ray Data maps over these."""

    source: str
    format: str
    path: str
    part: int = -1  # row group index for Parquet; -1 = the whole file
    image_root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> Shard:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


class Reader:
    """A format reader: plans shards (validating the source up front) and streams samples from one shard.

    `plan` must raise SourceError when a path is missing or not in the declared format, before any work
    starts. `read` must never raise for a bad record: it yields a Reject and goes on.
    """

    format: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()

    def plan(self, source: str, paths: list[str], image_root: str | None, options: dict) -> list[Shard]:
        files = expand_paths(paths, self.suffixes, self.format)
        for f in files:
            self.validate(f, options)
        return [Shard(source, self.format, f, -1, image_root, options) for f in files]

    def validate(self, path: str, options: dict) -> None:
        """Cheap check that `path` looks like this format (header, schema); raise SourceError if not."""

    def read(self, shard: Shard) -> Iterator[dict | Reject]:
        raise NotImplementedError


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem for a local path or any URI pyarrow or fsspec understands."""
    if "://" not in path:
        return pafs.LocalFileSystem(), path
    try:
        return pafs.FileSystem.from_uri(path)
    except (pafs.ArrowInvalid, ValueError, OSError):
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, inner = fsspec.core.url_to_fs(path)
        return PyFileSystem(FSSpecHandler(fs)), inner


def open_input(path: str, buffer_size: int = 1 << 20):
    """Sequential stream (.gz/.bz2/.zst decompressed by extension); buffered so object stores see few requests."""
    fs, inner = filesystem(path)
    return fs.open_input_stream(inner, buffer_size=buffer_size)


def read_bytes(path: str) -> bytes:
    with open_input(path) as f:
        return f.read()


def join(root: str, name: str) -> str:
    return name if "://" in name or name.startswith("/") else root.rstrip("/") + "/" + name


def expand_paths(paths: list[str], suffixes: tuple[str, ...], fmt: str) -> list[str]:
    """Files named by `paths`: files, directories (recursively, filtered by suffix) or glob patterns."""
    out: list[str] = []
    for path in paths:
        fs, inner = filesystem(path)
        prefix = path[: len(path) - len(inner)] if path.endswith(inner) else ""
        if any(ch in inner for ch in "*?["):
            base = inner[: min(inner.find(ch) for ch in "*?[" if ch in inner)].rsplit("/", 1)[0] or "/"
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            found = sorted(i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, inner))
        else:
            info = fs.get_file_info(inner)
            if info.type == pafs.FileType.NotFound:
                raise SourceError(path, fmt, "path does not exist")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
                found = sorted(
                    i.path for i in infos if i.is_file and (not suffixes or i.path.endswith(suffixes))
                )
            else:
                found = [inner]
        if not found:
            raise SourceError(path, fmt, f"no files matching {suffixes or 'any suffix'}")
        out.extend(prefix + f for f in found)
    return out
