"""Reads the history rows out of an offline wandb run file (`run-<id>.wandb`), the way `wandb sync` would.

The file is a LevelDB-style log (a 7-byte `:W&B` header, then 32 KiB blocks of records, each with a
7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of `wandb_internal_pb2.Record` protobufs."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, LAST = 1, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + HEADER]) if left >= HEADER else (0, 0, 0)
        if left < HEADER or (n == 0 and kind == 0):  # block trailer or zero padding
            pos += left
            continue
        buf += data[pos + HEADER : pos + HEADER + n]
        pos += HEADER + n
        if kind in (FULL, LAST):
            yield buf
            buf = b""


def run_record(run_file: Path, wait_s: float = 30.0) -> dict:
    """The run's own record: its id, display name and group. wandb's service process writes the file after
    `finish()` returns (it held only the header then), so this waits for the record."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        for payload in _payloads(run_file.read_bytes()):
            rec = pb.Record()
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "run":
                return {"id": rec.run.run_id, "name": rec.run.display_name, "group": rec.run.run_group}
        if time.monotonic() > deadline:
            raise AssertionError(f"no run record in {run_file} after {wait_s:.0f} s")
        time.sleep(0.2)


def history(run_file: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for payload in _payloads(run_file.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows
