"""Streaming JSON-lines (.jsonl, .jsonl.gz, .jsonl.zip): per-line decoding, first-record checks, a base reader."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from vilaray.data.readers.base import Reader, Shard, filesystem, open_input
from vilaray.data.readers.records import STREAM_ERRORS, BadRecord, build, fallback_id, own_id, stream_guard
from vilaray.data.sample import Reject, SourceError

CHUNK = 1 << 16  # small enough that a corrupt gzip tail costs few good lines before it
PROBE_LINES = 5  # plan() looks this far for one well-formed record, so one bad first line is not fatal


def raw_lines(path: str) -> Iterator[bytes]:
    """Lines of a JSON-lines file without loading it whole; .gz is decompressed by pyarrow, .zip member by member."""
    with _members(path) as streams:
        for stream in streams:
            yield from _split(stream)


def decode_line(line: bytes) -> Any:
    """The JSON value on one line, or a BadRecord saying why there is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord("invalid_utf8", str(err))
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return BadRecord("broken_json", str(err))


def json_lines(path: str) -> Iterator[tuple[int, Any, bytes]]:
    """(line index, decoded value or BadRecord, raw line) for every non-blank line."""
    for index, line in enumerate(raw_lines(path)):
        if line.strip():
            yield index, decode_line(line), line


def check_first_records(path: str, fmt: str, required: tuple[str, ...]) -> None:
    """Fail fast unless one of the first lines is a JSON object carrying the format's key fields."""
    seen = []
    try:
        for _, value, _ in itertools.islice(json_lines(path), PROBE_LINES):
            if isinstance(value, dict) and all(k in value for k in required):
                return
            seen.append(_describe(value))
    except STREAM_ERRORS as err:
        raise SourceError(path, fmt, f"cannot read as JSON lines: {err}") from None
    if not seen:
        raise SourceError(path, fmt, "file has no records")
    raise SourceError(path, fmt, f"first lines are not JSON objects with fields {list(required)}: {seen}")


class JsonLinesReader(Reader):
    """One JSON object per line; subclasses name their key fields and convert one object to a sample."""

    suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".jsonl.gz")
    id_key: ClassVar[str | None] = "id"

    def required(self, options: dict) -> tuple[str, ...]:
        raise NotImplementedError

    def to_sample(self, shard: Shard, record: Any, record_id: str) -> dict:
        """Convert one decoded record; raise BadRecord (or let a shape error escape) to reject it."""
        raise NotImplementedError

    def validate(self, path: str, options: dict) -> None:
        check_first_records(path, self.format, self.required(options))

    def read(self, shard: Shard) -> Iterator[dict | Reject]:
        last = [0]

        def records():
            for index, value, raw in json_lines(shard.path):
                last[0] = index + 1
                yield self._convert(shard, index, value, raw)

        yield from stream_guard(shard, records(), lambda: fallback_id(shard, last[0]))

    def _convert(self, shard: Shard, index: int, value: Any, raw: bytes) -> dict | Reject:
        fallback = fallback_id(shard, index)
        if isinstance(value, BadRecord):
            return Reject(value.reason, shard.source, fallback, value.detail, _printable(raw))
        record_id = own_id(value, fallback, self.id_key) if self.id_key else fallback
        return build(shard, record_id, value, lambda: self.to_sample(shard, value, record_id))


@contextmanager
def _members(path: str):
    if not path.endswith(".zip"):
        with open_input(path) as stream:
            yield [stream]
        return
    fs, inner = filesystem(path)
    with fs.open_input_file(inner) as raw, zipfile.ZipFile(raw) as archive:
        # Sorted names keep line indices, and so fallback ids, stable across runs.
        names = sorted(
            i.filename for i in archive.infolist() if not i.is_dir() and "__MACOSX" not in i.filename
        )
        if not names:
            raise zipfile.BadZipFile("zip archive has no files")
        yield _zip_members(archive, names)


def _zip_members(archive: zipfile.ZipFile, names: list[str]):
    for name in names:
        with archive.open(name) as member:
            yield member


def _split(stream) -> Iterator[bytes]:
    pending: list[bytes] = []  # pieces of a line longer than a chunk (MMC4 lines with base64 run to MBs)
    while chunk := stream.read(CHUNK):
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        first, *middle, last = chunk.split(b"\n")
        yield b"".join([*pending, first])
        yield from middle
        pending = [last]
    if tail := b"".join(pending):
        yield tail


def _describe(value: Any) -> str:
    if isinstance(value, BadRecord):
        return value.reason
    if isinstance(value, dict):
        return f"object with keys {sorted(value)[:8]}"
    return type(value).__name__


def _printable(raw: bytes, limit: int = 4000) -> str:
    return raw[:limit].decode("utf-8", "replace")
