"""WebDataset tar shards (`<key>.jpg` + `<key>.txt`/`<key>.json`, as img2dataset writes them) -> `pair` samples."""

from __future__ import annotations

import functools
import itertools
import json
import tarfile
from collections.abc import Iterator

from vilaray.data.readers import register
from vilaray.data.readers.base import Reader, Shard, open_input
from vilaray.data.readers.records import (
    STREAM_ERRORS,
    BadRecord,
    basename,
    build,
    nonblank_text,
    stream_guard,
)
from vilaray.data.sample import Reject, SourceError, image_part, make_sample, text_part

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("caption", "text")


@register
class WebDatasetReader(Reader):
    """Members are grouped by key (name up to the first dot of the basename, folder included), consecutively,
    the WebDataset convention; the sample id is the key. The tar is streamed, never extracted to disk."""

    format = "webdataset"
    suffixes = (".tar", ".tar.gz")  # pyarrow decompresses .gz by extension; tarfile sees a plain tar

    def validate(self, path: str, options: dict) -> None:
        try:
            with open_input(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                first = next((m for m in tar if m.isfile()), None)
        except STREAM_ERRORS as err:
            raise SourceError(path, self.format, f"not a tar archive: {err}") from None
        if first is None:
            raise SourceError(path, self.format, "tar has no file members")

    def read(self, shard: Shard) -> Iterator[dict | Reject]:
        last = ["<start>"]  # the key being read when a damaged archive breaks off

        def samples():
            # A key is judged only once the next one starts (or the archive proved complete): in a cut
            # tar the last key may be missing members, and must not be rejected as if it were whole.
            pending = None
            with open_input(shard.path) as raw:
                stream = _TailTracker(raw)
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for key, group in itertools.groupby(_members(tar), key=lambda m: m[0]):
                        if pending:
                            yield _build(shard, *pending)
                        last[0] = key
                        pending = key, {ext: data for _, ext, data in group}
                if not stream.complete():
                    raise tarfile.ReadError("archive ends without its end-of-archive zero block")
            if pending:
                yield _build(shard, *pending)

        yield from stream_guard(shard, samples(), lambda: f"{basename(shard.path)}:{last[0]}")


class _TailTracker:
    """Passes reads through, keeping the last block read.

    tarfile takes a tar cut at a header boundary for a normal end; a complete tar ends in zero blocks.
    """

    def __init__(self, stream):
        self.stream, self.tail = stream, b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size) if size is not None and size >= 0 else self.stream.read()
        if data:
            self.tail = (self.tail + data)[-tarfile.BLOCKSIZE :]
        return data

    def complete(self) -> bool:
        while self.read(1 << 16):  # tarfile stops at the first zero block; the rest is padding
            pass
        return self.tail == bytes(tarfile.BLOCKSIZE)


def split_name(name: str) -> tuple[str, str]:
    """`dir/000001.seg.png` -> (`dir/000001`, `seg.png`): WebDataset keys end at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, bytes]]:
    for member in tar:
        base = member.name.rsplit("/", 1)[-1]
        if not member.isfile() or base.startswith("."):  # skip folders and macOS `._*` resource forks
            continue
        key, ext = split_name(member.name)
        yield key, ext, tar.extractfile(member).read()


def _build(shard: Shard, key: str, files: dict[str, bytes]) -> dict | Reject:
    return build(shard, key, files, functools.partial(_to_sample, shard, key, files))


def _to_sample(shard: Shard, key: str, files: dict[str, bytes]) -> dict:
    image = next((files[ext] for ext in IMAGE_EXTS if ext in files), None)
    if not image:
        raise BadRecord(
            "missing_image", f"key {key!r} has no {'/'.join(IMAGE_EXTS)} member (has {sorted(files)})"
        )
    caption = nonblank_text(_caption(files), f"caption of key {key!r}")
    return make_sample(shard.source, key, "pair", [image_part(image), text_part(caption)])


def _caption(files: dict[str, bytes]) -> str | None:
    if "txt" in files:
        return _utf8(files["txt"])
    if "json" not in files:
        return None
    try:
        meta = json.loads(_utf8(files["json"]))
    except json.JSONDecodeError as err:
        raise BadRecord("broken_json", f"json member: {err}") from None
    if not isinstance(meta, dict):
        raise BadRecord("bad_schema", "json member is not an object")
    return next((meta[k] for k in CAPTION_KEYS if meta.get(k) is not None), None)


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord("invalid_utf8", str(err)) from None
