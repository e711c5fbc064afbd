"""Parquet readers' shared half: schema checks at plan time, one shard per row group, rows streamed in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from vilaray.data.readers.base import Reader, Shard, expand_paths, filesystem
from vilaray.data.readers.records import STREAM_ERRORS, build, fallback_id, own_id, stream_guard
from vilaray.data.sample import Reject, SourceError

TypeCheck = Callable[[pa.DataType], bool]


def is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def is_image(t: pa.DataType) -> bool:
    """Binary bytes, a path/URI string, an HF Image struct {bytes, path}, or all-null (every download failed)."""
    if pa.types.is_struct(t):
        return any(t.field(i).name in ("bytes", "path") for i in range(t.num_fields))
    return is_binary(t) or is_text(t) or pa.types.is_null(t)


def list_of(check: TypeCheck) -> TypeCheck:
    def test(t: pa.DataType) -> bool:
        listy = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)
        return listy and check(t.value_type)

    return test


class Column:
    """One column a reader needs: the option that overrides its name, accepted aliases, its type check."""

    def __init__(self, role: str, aliases: tuple[str, ...], check: TypeCheck | None, required: bool = True):
        self.role, self.aliases, self.check, self.required = role, aliases, check, required

    def find(self, schema: pa.Schema, options: dict) -> str | None:
        """The column name to use; raises ValueError (the plan-time complaint) when it is missing or mistyped."""
        override = options.get(f"{self.role}_column")
        candidates = (override,) if override else self.aliases
        name = next((c for c in candidates if c in schema.names), None)
        if name is None:
            if self.required:
                raise ValueError(f"no {self.role} column (looked for {list(candidates)}; has {schema.names})")
            return None
        if self.check and not self.check(schema.field(name).type):
            raise ValueError(f"column {name!r} has type {schema.field(name).type}, unusable as {self.role}")
        return name


class ParquetReader(Reader):
    """Parquet source: subclasses declare their columns and convert one row (keyed by role) to a sample."""

    suffixes: ClassVar[tuple[str, ...]] = (".parquet",)
    columns: ClassVar[tuple[Column, ...]] = ()
    batch_rows: ClassVar[int] = 256

    def to_sample(self, shard: Shard, row: dict, record_id: str) -> dict:
        raise NotImplementedError

    def plan(self, source: str, paths: list[str], image_root: str | None, options: dict) -> list[Shard]:
        shards = []
        for path in expand_paths(paths, self.suffixes, self.format):
            with self._open(path) as pf:
                self._names(path, pf.schema_arrow, options)
                parts = range(pf.metadata.num_row_groups)
            shards += [Shard(source, self.format, path, part, image_root, options) for part in parts]
        return shards

    def validate(self, path: str, options: dict) -> None:
        with self._open(path) as pf:
            self._names(path, pf.schema_arrow, options)

    def read(self, shard: Shard) -> Iterator[dict | Reject]:
        position = [0]

        def rows():
            with self._open(shard.path) as pf:
                names = self._names(shard.path, pf.schema_arrow, shard.options)
                groups = [shard.part] if shard.part >= 0 else list(range(pf.metadata.num_row_groups))
                position[0] = (
                    sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
                )
                wanted = list(dict.fromkeys(names.values()))
                for batch in pf.iter_batches(self.batch_rows, row_groups=groups, columns=wanted):
                    for row in batch.to_pylist():
                        yield self._convert(shard, position[0], {r: row[n] for r, n in names.items()})
                        position[0] += 1

        yield from stream_guard(shard, rows(), lambda: fallback_id(shard, position[0]))

    def _convert(self, shard: Shard, index: int, row: dict) -> dict | Reject:
        record_id = own_id(row, fallback_id(shard, index))
        return build(shard, record_id, row, lambda: self.to_sample(shard, row, record_id))

    def _names(self, path: str, schema: pa.Schema, options: dict) -> dict[str, str]:
        try:
            found = {c.role: c.find(schema, options) for c in self.columns}
        except ValueError as err:
            raise SourceError(path, self.format, str(err)) from None
        return {role: name for role, name in found.items() if name is not None}

    @contextmanager
    def _open(self, path: str) -> Iterator[pq.ParquetFile]:
        fs, inner = filesystem(path)
        try:
            raw = fs.open_input_file(inner)
        except OSError as err:
            raise SourceError(path, self.format, f"cannot open: {err}") from None
        with raw:
            try:
                pf = pq.ParquetFile(raw)
            except STREAM_ERRORS as err:
                raise SourceError(path, self.format, f"not a Parquet file: {err}") from None
            yield pf
