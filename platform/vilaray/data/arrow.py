"""Small Arrow helpers: zero-copy list-column slices and row lists -> tables with an explicit schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def list_slices(table: pa.Table, name: str) -> list[np.ndarray]:
    """A list<int> column as one numpy view per row (no per-element Python objects)."""
    col = table.column(name).combine_chunks()
    if isinstance(col, pa.ChunkedArray):  # empty tables come back chunked
        col = pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], type=col.type)
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(col))]


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in schema}, schema=schema)


def table_rows(table: pa.Table, array_columns: tuple[str, ...]) -> list[dict]:
    """Rows as dicts; the named list<int> columns come as numpy views, the rest as Python values."""
    plain = [f.name for f in table.schema if f.name not in array_columns]
    rows = table.select(plain).to_pylist()
    for name in array_columns:
        for row, arr in zip(rows, list_slices(table, name)):
            row[name] = arr
    return rows
