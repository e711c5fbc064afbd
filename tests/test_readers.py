"""Format readers: upstream-schema files -> canonical samples, bad records -> Rejects, bad sources -> SourceError."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pytest
from _formats import (
    IMAGE_STRUCT,
    b64,
    data_url,
    jsonl_bytes,
    llava_record,
    mmc4_doc,
    png,
    write_images,
    write_json,
    write_jsonl,
    write_parquet,
    write_tar,
)
from vilaray.data.readers import READERS, Shard, get_reader
from vilaray.data.readers.webdataset import split_name
from vilaray.data.sample import Reject, SourceError

A, B, C, D = png(1), png(2), png(3), png(4)


def read_all(fmt, paths, image_root=None, options=None):
    shards = get_reader(fmt).plan(
        "src", [str(p) for p in paths], image_root and str(image_root), options or {}
    )
    items = [item for shard in shards for item in get_reader(fmt).read(shard)]
    samples = [i for i in items if not isinstance(i, Reject)]
    for sample in samples:
        assert_canonical(sample)
    return samples, [i for i in items if isinstance(i, Reject)]


def assert_canonical(sample):
    assert set(sample) == {"source", "id", "kind", "segments", "messages"}
    assert isinstance(sample["id"], str) and sample["source"] == "src"
    parts = sample["segments"] + [p for m in sample["messages"] for p in m["content"]]
    assert all((p["text"] is None) != (p["image"] is None) for p in parts)
    assert all(m["role"] in ("system", "user", "assistant") for m in sample["messages"])


def parts(seq):
    """Parts as compact tuples: ("t", text) or ("i", bytes)."""
    return [("t", p["text"]) if p["text"] is not None else ("i", p["image"]) for p in seq]


def chat(sample):
    return [(m["role"], parts(m["content"])) for m in sample["messages"]]


def reasons(rejects):
    return {r.record_id: r.reason for r in rejects}


def test_registry_has_every_format():
    assert sorted(READERS) == [
        "llava_json",
        "messages_jsonl",
        "mmc4_jsonl",
        "obelics_parquet",
        "pairs_parquet",
        "text_jsonl",
        "webdataset",
    ]


# ---- pairs_parquet (COYO / LAION after img2dataset) ----


def test_pairs_binary_images_planned_per_row_group(tmp_path):
    path = write_parquet(
        tmp_path / "coyo.parquet",
        {
            "id": [10, 11, 12, 13, 14],
            "url": [f"http://x/{i}.jpg" for i in range(5)],
            "caption": ["a", "b", "c", "d", "e"],
            "jpg": [A, B, C, D, A],
        },
        {"jpg": pa.binary()},
        rows_per_group=2,
    )
    shards = get_reader("pairs_parquet").plan("src", [str(path)], None, {})
    assert [s.part for s in shards] == [0, 1, 2]
    samples, rejects = read_all("pairs_parquet", [path])
    assert not rejects
    assert [s["id"] for s in samples] == ["10", "11", "12", "13", "14"]
    whole = Shard.from_row(json.loads(json.dumps({**shards[0].to_row(), "part": -1})))
    assert [s["id"] for s in get_reader("pairs_parquet").read(whole)] == ["10", "11", "12", "13", "14"]
    assert {s["kind"] for s in samples} == {"pair"}
    assert parts(samples[2]["segments"]) == [("i", C), ("t", "c")]


def test_pairs_image_struct_paths_and_bad_rows(tmp_path):
    root = write_images(tmp_path / "imgs", {"00/b.png": B})
    images = [
        {"bytes": A, "path": "a.png"},  # HF Image struct with embedded bytes
        {"bytes": None, "path": "00/b.png"},  # path under image_root
        {"bytes": None, "path": "00/nope.png"},
        None,  # img2dataset row whose download failed
        {"bytes": None, "path": "https://example.com/c.jpg"},
        {"bytes": C, "path": None},
        {"bytes": D, "path": None},
    ]
    texts = ["a", "b", "missing", "failed", "remote", "  ", "d"]
    path = write_parquet(
        tmp_path / "laion.parquet", {"TEXT": texts, "image": images}, {"image": IMAGE_STRUCT}
    )
    samples, rejects = read_all("pairs_parquet", [path], image_root=root)
    assert [s["id"] for s in samples] == ["laion.parquet:0", "laion.parquet:1", "laion.parquet:6"]
    assert [parts(s["segments"]) for s in samples] == [
        [("i", A), ("t", "a")],
        [("i", B), ("t", "b")],
        [("i", D), ("t", "d")],
    ]
    assert reasons(rejects) == {
        "laion.parquet:2": "missing_image",
        "laion.parquet:3": "missing_image",
        "laion.parquet:4": "remote_url",
        "laion.parquet:5": "empty",
    }
    remote = next(r for r in rejects if r.reason == "remote_url")
    assert "img2dataset" in remote.detail
    assert json.loads(remote.to_json())["reason"] == "remote_url"


def test_pairs_string_paths_with_column_options(tmp_path):
    write_images(tmp_path, {"a.jpg": A})
    path = write_parquet(
        tmp_path / "custom.parquet",
        {
            "uid": ["u0", "u1", "u2", "u3"],
            "alt": ["one", "two", "three", "four"],
            "file": ["a.jpg", data_url(B), "data:image/png;base64,@@@", "/no/such/file.jpg"],
        },
    )
    options = {"id_column": "uid", "text_column": "alt", "image_column": "file"}
    # No image_root: relative paths resolve in the data file's own folder.
    samples, rejects = read_all("pairs_parquet", [path], options=options)
    assert [(s["id"], parts(s["segments"])) for s in samples] == [
        ("u0", [("i", A), ("t", "one")]),
        ("u1", [("i", B), ("t", "two")]),
    ]
    assert reasons(rejects) == {"u2": "bad_base64", "u3": "missing_image"}


def test_pairs_file_uri_and_directory(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for n in range(2):
        write_parquet(folder / f"part-{n}.parquet", {"id": [f"p{n}"], "text": ["t"], "image": [A]})
    (folder / "README.md").write_text("not data")
    samples, rejects = read_all("pairs_parquet", [f"file://{folder / 'part-1.parquet'}"])
    assert [s["id"] for s in samples] == ["p1"] and not rejects
    samples, _ = read_all("pairs_parquet", [folder])
    assert [s["id"] for s in samples] == ["p0", "p1"]
    samples, _ = read_all("pairs_parquet", [f"{folder}/part-*.parquet"])
    assert len(samples) == 2


@pytest.mark.parametrize(
    "columns, why",
    [
        ({"id": [1], "image": [b"x"]}, "no text column"),
        ({"id": [1], "text": ["t"]}, "no image column"),
        ({"text": [1], "image": [b"x"]}, "unusable as text"),
    ],
)
def test_pairs_schema_checked_at_plan(tmp_path, columns, why):
    path = write_parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(SourceError, match=why) as err:
        get_reader("pairs_parquet").plan("src", [str(path)], None, {})
    assert err.value.path == str(path) and err.value.format == "pairs_parquet"


# ---- obelics_parquet ----


def obelics_file(tmp_path, docs, ids=None, rows_per_group=None):
    columns = {
        "images": [d[0] for d in docs],
        "texts": [d[1] for d in docs],
        "general_metadata": [json.dumps({"url": f"http://doc/{i}"}) for i in range(len(docs))],
    }
    if ids:
        columns["id"] = ids
    return write_parquet(
        tmp_path / "obelics.parquet",
        columns,
        {"images": pa.list_(pa.binary())},
        rows_per_group=rows_per_group,
    )


def test_obelics_interleaved_in_list_order(tmp_path):
    docs = [
        ([None, A, None, B], ["intro", None, "middle", None]),
        ([C, None], [None, "caption after image"]),
    ]
    path = obelics_file(tmp_path, docs, ids=["doc-a", "doc-b"], rows_per_group=1)
    assert [s.part for s in get_reader("obelics_parquet").plan("src", [str(path)], None, {})] == [0, 1]
    samples, rejects = read_all("obelics_parquet", [path])
    assert not rejects
    assert [(s["id"], s["kind"]) for s in samples] == [("doc-a", "interleaved"), ("doc-b", "interleaved")]
    assert parts(samples[0]["segments"]) == [("t", "intro"), ("i", A), ("t", "middle"), ("i", B)]
    assert parts(samples[1]["segments"]) == [("i", C), ("t", "caption after image")]


def test_obelics_structs_paths_and_urls(tmp_path):
    write_images(tmp_path / "root", {"x/b.png": B})
    images = [
        [None, {"bytes": A, "path": None}, {"bytes": None, "path": "x/b.png"}],
        [None, {"bytes": None, "path": "http://web/img.jpg"}],
    ]
    texts = [["t", None, None], ["t", None]]
    path = write_parquet(
        tmp_path / "o.parquet", {"images": images, "texts": texts}, {"images": pa.list_(IMAGE_STRUCT)}
    )
    samples, rejects = read_all("obelics_parquet", [path], image_root=tmp_path / "root")
    assert parts(samples[0]["segments"]) == [("t", "t"), ("i", A), ("i", B)]
    assert reasons(rejects) == {"o.parquet:1": "remote_url"}


def test_obelics_bad_documents(tmp_path):
    docs = [
        ([None, A], ["good", None]),
        ([A, None], ["both set", None]),  # misaligned: position 0 has image and text
        ([None, None], ["ok", None]),  # misaligned: position 1 has neither
        ([None, A], ["different lengths"]),
        ([A, B], [None, None]),  # images only
        ([], []),
        ([None], ["last good"]),
    ]
    samples, rejects = read_all("obelics_parquet", [obelics_file(tmp_path, docs)])
    assert [s["id"] for s in samples] == ["obelics.parquet:0", "obelics.parquet:6"]
    assert [r.reason for r in rejects] == ["misaligned", "misaligned", "misaligned", "empty", "empty"]


def test_obelics_wrong_format_fails_fast(tmp_path):
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [{"text": "hello"}])
    with pytest.raises(SourceError, match="obelics_parquet") as err:
        get_reader("obelics_parquet").plan("src", [str(jsonl)], None, {})
    assert str(jsonl) in str(err.value)
    pairs = write_parquet(tmp_path / "pairs.parquet", {"text": ["t"], "image": [A]})
    with pytest.raises(SourceError, match="no images column"):
        get_reader("obelics_parquet").plan("src", [str(pairs)], None, {})
    with pytest.raises(SourceError, match="does not exist") as err:
        get_reader("obelics_parquet").plan("src", [str(tmp_path / "missing.parquet")], None, {})
    assert err.value.format == "obelics_parquet"


# ---- mmc4_jsonl ----


def mmc4_lines():
    good = mmc4_doc(
        "http://site/a",
        ["first sentence.", "second sentence.", "third sentence."],
        [
            {"image_name": "a.jpg", "matched_text_index": 2},
            {"image_name": "b.jpg", "matched_text_index": 0, "image_base64": b64(B)},
            {"image_name": "c.jpg", "matched_text_index": 2},
        ],
    )
    return [
        good,
        b'{"url": "http://site/broken", "text_list": [',
        b'{"url": "http://site/\xff\xfe", "text_list": ["x"], "image_info": []}',
        mmc4_doc(
            "u", ["s"], [{"image_name": "z.jpg", "matched_text_index": 0, "image_base64": "!!not base64!!"}]
        ),
        mmc4_doc("u", ["s"], [{"image_name": "a.jpg", "matched_text_index": 3}]),
        mmc4_doc("u", ["s"], [{"image_name": "gone.jpg", "matched_text_index": 0}]),
        {
            "url": "u",
            "text_list": ["s"],
            "image_info": [{"raw_url": "https://x/y.jpg", "matched_text_index": 0}],
        },
        {"url": "u", "text_list": "not a list", "image_info": []},
        mmc4_doc("u", [], []),
        mmc4_doc("http://site/last", ["only text."], []),
    ]


@pytest.mark.parametrize(
    "name", ["docs_shard_0_v2.jsonl", "docs_shard_0_v2.jsonl.gz", "docs_shard_0_v2.jsonl.zip"]
)
def test_mmc4_images_before_matched_sentence_and_bad_lines(tmp_path, name):
    root = write_images(tmp_path / "images", {"a.jpg": A, "c.jpg": C})
    path = write_jsonl(tmp_path / name, mmc4_lines())
    samples, rejects = read_all("mmc4_jsonl", [path], image_root=root)
    assert [s["id"] for s in samples] == [f"{name}:0", f"{name}:9"]
    assert samples[0]["kind"] == "interleaved"
    assert parts(samples[0]["segments"]) == [
        ("i", B),
        ("t", "first sentence."),
        ("t", "second sentence."),
        ("i", A),
        ("i", C),
        ("t", "third sentence."),
    ]
    assert [(r.record_id, r.reason) for r in rejects] == [
        (f"{name}:1", "broken_json"),
        (f"{name}:2", "invalid_utf8"),
        (f"{name}:3", "bad_base64"),
        (f"{name}:4", "image_index_out_of_range"),
        (f"{name}:5", "missing_image"),
        (f"{name}:6", "remote_url"),
        (f"{name}:7", "bad_schema"),
        (f"{name}:8", "empty"),
    ]


def test_mmc4_file_uri_with_images_beside_the_data(tmp_path):
    write_images(tmp_path, {"imgs/a.jpg": A})
    write_jsonl(
        tmp_path / "docs.jsonl",
        [mmc4_doc("u", ["s."], [{"image_name": "imgs/a.jpg", "matched_text_index": 0}])],
    )
    samples, rejects = read_all("mmc4_jsonl", [f"file://{tmp_path}/docs.jsonl"])
    assert not rejects and parts(samples[0]["segments"]) == [("i", A), ("t", "s.")]


def test_mmc4_truncated_gzip_keeps_lines_before_the_break(tmp_path):
    rng = random.Random(0)  # incompressible text, so half the gzip holds several read chunks of lines
    lines = [mmc4_doc("u", [rng.randbytes(150).hex()], []) for i in range(2000)]
    body = gzip.compress(jsonl_bytes(lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(body[: len(body) // 2])
    samples, rejects = read_all("mmc4_jsonl", [path])
    assert 500 < len(samples) < 1000
    assert [r.reason for r in rejects] == ["truncated"]


def test_mmc4_plan_checks_first_records(tmp_path):
    ok = write_jsonl(tmp_path / "first_broken.jsonl", [b"{oops", mmc4_doc("u", ["s"], [])])
    assert len(get_reader("mmc4_jsonl").plan("src", [str(ok)], None, {})) == 1
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain"}])
    with pytest.raises(SourceError, match="text_list"):
        get_reader("mmc4_jsonl").plan("src", [str(text)], None, {})
    parquet = write_parquet(tmp_path / "p.parquet", {"text": ["t"]})
    with pytest.raises(SourceError, match="mmc4_jsonl"):
        get_reader("mmc4_jsonl").plan("src", [str(parquet)], None, {})


# ---- llava_json ----


def test_llava_pretrain_and_sft_records(tmp_path):
    write_images(tmp_path / "imgs", {"00000/a.jpg": A, "coco/b.jpg": B, "c.jpg": C})
    records = [
        llava_record(
            "000", [("human", "<image>\nRender a short caption."), ("gpt", "a red circle")], "00000/a.jpg"
        ),
        llava_record(
            "sft-1",
            [
                ("system", "Be brief."),
                ("human", "What is it?"),
                ("gpt", "A square."),
                ("human", "Colour?"),
                ("gpt", "Blue."),
            ],
            "coco/b.jpg",  # no <image> placeholder: goes before the first human turn
        ),
        llava_record(
            "two", [("human", "Left <image> right <image>"), ("gpt", "two shapes")], ["c.jpg", "coco/b.jpg"]
        ),
        llava_record("text-only", [("human", "Hi"), ("gpt", "Hello!")]),
    ]
    path = write_json(tmp_path / "llava_v1_5_mix665k.json", records)
    samples, rejects = read_all("llava_json", [path], image_root=tmp_path / "imgs")
    assert not rejects
    assert [s["id"] for s in samples] == ["000", "sft-1", "two", "text-only"]
    assert {s["kind"] for s in samples} == {"chat"}
    assert chat(samples[0]) == [
        ("user", [("i", A), ("t", "\nRender a short caption.")]),
        ("assistant", [("t", "a red circle")]),
    ]
    assert chat(samples[1])[:3] == [
        ("system", [("t", "Be brief.")]),
        ("user", [("i", B), ("t", "\nWhat is it?")]),
        ("assistant", [("t", "A square.")]),
    ]
    assert chat(samples[2])[0] == ("user", [("t", "Left "), ("i", C), ("t", " right "), ("i", B)])
    assert chat(samples[3]) == [("user", [("t", "Hi")]), ("assistant", [("t", "Hello!")])]


def test_llava_bad_records(tmp_path):
    write_images(tmp_path, {"a.jpg": A})
    good = llava_record("good", [("human", "<image>\nDescribe."), ("gpt", "ok")], "a.jpg")
    records = [
        good,
        llava_record("mismatch", [("human", "<image> and <image>"), ("gpt", "x")], "a.jpg"),
        llava_record("orphan", [("human", "<image> what?"), ("gpt", "x")]),
        llava_record("missing", [("human", "<image>"), ("gpt", "x")], "nope.jpg"),
        llava_record("remote", [("human", "<image>"), ("gpt", "x")], "http://images.cocodataset.org/1.jpg"),
        llava_record("robot", [("robot", "beep"), ("gpt", "x")]),
        {"id": "noconv", "image": "a.jpg"},
        llava_record("nothing", []),
        {**good, "id": "good-2"},
    ]
    samples, rejects = read_all("llava_json", [write_json(tmp_path / "sft.json", records)])
    assert [s["id"] for s in samples] == ["good", "good-2"]
    assert reasons(rejects) == {
        "mismatch": "image_count_mismatch",
        "orphan": "image_count_mismatch",
        "missing": "missing_image",
        "remote": "remote_url",
        "robot": "bad_schema",
        "noconv": "bad_schema",
        "nothing": "empty",
    }


def test_llava_jsonl_streams_lines(tmp_path):
    good = llava_record("a", [("human", "hi"), ("gpt", "yo")])
    path = write_jsonl(tmp_path / "chat.jsonl", [good, b"not json", {**good, "id": "b"}])
    samples, rejects = read_all("llava_json", [path])
    assert [s["id"] for s in samples] == ["a", "b"]
    assert [(r.record_id, r.reason) for r in rejects] == [("chat.jsonl:1", "broken_json")]


def test_llava_plan_rejects_non_array_json(tmp_path):
    obj = write_json(tmp_path / "obj.json", {"conversations": []})
    with pytest.raises(SourceError, match="not a JSON array") as err:
        get_reader("llava_json").plan("src", [str(obj)], None, {})
    assert err.value.path == str(obj) and err.value.format == "llava_json"
    other = write_json(tmp_path / "other.json", [{"messages": []}])
    with pytest.raises(SourceError, match="conversations"):
        get_reader("llava_json").plan("src", [str(other)], None, {})


# ---- messages_jsonl ----


def test_messages_openai_parts(tmp_path):
    write_images(tmp_path / "imgs", {"b.png": B, "c.png": C})
    lines = [
        {
            "id": "m1",
            "messages": [
                {"role": "system", "content": "You see shapes."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": data_url(A)}},
                    ],
                },
                {"role": "assistant", "content": "A circle."},
            ],
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": "b.png"}, {"type": "text", "text": "and?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
            ]
        },
        {
            "id": "lf",
            "images": ["c.png"],
            "messages": [
                {"role": "user", "content": "<image>Count them."},
                {"role": "assistant", "content": "Three."},
            ],
        },
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", lines)
    samples, rejects = read_all("messages_jsonl", [path], image_root=tmp_path / "imgs")
    assert not rejects
    assert [s["id"] for s in samples] == ["m1", "chat.jsonl:1", "lf"]
    assert chat(samples[0]) == [
        ("system", [("t", "You see shapes.")]),
        ("user", [("t", "What is this?"), ("i", A)]),
        ("assistant", [("t", "A circle.")]),
    ]
    assert chat(samples[1])[0] == ("user", [("i", B), ("t", "and?")])
    assert chat(samples[2])[0] == ("user", [("i", C), ("t", "Count them.")])


def test_messages_bad_records(tmp_path):
    def msg(rid, content, **extra):
        return {
            "id": rid,
            "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}],
            **extra,
        }

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,####"}}
    lines = [
        msg("good", "hello"),
        msg("b64", [image]),
        msg("remote", [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]),
        {"id": "role", "messages": [{"role": "tool", "content": "x"}]},
        msg("audio", [{"type": "input_audio", "input_audio": {}}]),
        msg("count", "<image><image>", images=[data_url(A)]),
        b"{broken",
        b'{"id": "\xc3\x28", "messages": []}',
        {"id": "none", "messages": []},
        msg("good-2", "bye"),
    ]
    samples, rejects = read_all("messages_jsonl", [write_jsonl(tmp_path / "m.jsonl", lines)])
    assert [s["id"] for s in samples] == ["good", "good-2"]
    assert reasons(rejects) == {
        "b64": "bad_base64",
        "remote": "remote_url",
        "role": "bad_schema",
        "audio": "bad_schema",
        "count": "image_count_mismatch",
        "m.jsonl:6": "broken_json",
        "m.jsonl:7": "invalid_utf8",
        "none": "empty",
    }


# ---- text_jsonl ----


def test_text_jsonl_good_bad_and_options(tmp_path):
    lines = [
        {"text": "first", "id": "t0"},
        {"text": "  "},
        {"text": 5},
        {"other": "x"},
        b"\xff\xfe",
        {"text": "last"},
    ]
    samples, rejects = read_all("text_jsonl", [write_jsonl(tmp_path / "wiki.jsonl.gz", lines)])
    assert [(s["id"], s["kind"], parts(s["segments"])) for s in samples] == [
        ("t0", "text", [("t", "first")]),
        ("wiki.jsonl.gz:5", "text", [("t", "last")]),
    ]
    assert [r.reason for r in rejects] == ["empty", "bad_schema", "bad_schema", "invalid_utf8"]
    path = write_jsonl(tmp_path / "web.jsonl", [{"content": "body"}])
    samples, _ = read_all("text_jsonl", [path], options={"text_field": "content"})
    assert parts(samples[0]["segments"]) == [("t", "body")]
    with pytest.raises(SourceError, match="'text'"):
        read_all("text_jsonl", [path])


# ---- webdataset ----


def test_webdataset_groups_members_by_key(tmp_path):
    members = [
        ("000.jpg", A),
        ("000.txt", b"a caption"),
        ("001.png", B),
        ("001.json", json.dumps({"caption": "json caption", "url": "u"}).encode()),
        ("sub/002.webp", C),
        ("sub/002.txt", b"in a folder"),
        ("003.txt", b"no image"),
        ("004.jpg", A),
        ("005.jpg", A),
        ("005.txt", b"\xff bad"),
        ("006.jpg", A),
        ("006.json", b"{nope"),
        ("007.jpeg", D),
        ("007.txt", b"last"),
    ]
    samples, rejects = read_all("webdataset", [write_tar(tmp_path / "00000.tar", members)])
    assert [(s["id"], s["kind"], parts(s["segments"])) for s in samples] == [
        ("000", "pair", [("i", A), ("t", "a caption")]),
        ("001", "pair", [("i", B), ("t", "json caption")]),
        ("sub/002", "pair", [("i", C), ("t", "in a folder")]),
        ("007", "pair", [("i", D), ("t", "last")]),
    ]
    assert reasons(rejects) == {
        "003": "missing_image",
        "004": "empty",
        "005": "invalid_utf8",
        "006": "broken_json",
    }


def test_webdataset_truncated_and_bad_sources(tmp_path):
    members = [(f"{i:03d}.{ext}", A if ext == "jpg" else b"cap") for i in range(20) for ext in ("jpg", "txt")]
    whole = write_tar(tmp_path / "whole.tar", members).read_bytes()
    cut = tmp_path / "cut.tar"
    for size in (len(whole) // 2, 512 * 7, 512 * 7 + 100):  # mid-member, at a header, inside a header
        cut.write_bytes(whole[:size])
        samples, rejects = read_all("webdataset", [cut])
        assert 0 < len(samples) < 20 and [r.reason for r in rejects] == ["truncated"], size
    assert len(read_all("webdataset", [tmp_path / "whole.tar"])[0]) == 20
    empty = write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(SourceError, match="no file members"):
        get_reader("webdataset").plan("src", [str(empty)], None, {})
    jsonl = write_jsonl(tmp_path / "x.jsonl", [{"text": "t"}])
    with pytest.raises(SourceError, match="not a tar"):
        get_reader("webdataset").plan("src", [str(jsonl)], None, {})


def test_webdataset_key_is_name_up_to_first_dot():
    assert split_name("dir/000001.seg.PNG") == ("dir/000001", "seg.png")
    assert split_name("a.jpg") == ("a", "jpg")


# ---- shared behaviour ----


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_missing_path_fails_fast_naming_path_and_format(tmp_path, fmt):
    missing = str(tmp_path / "nowhere" / "data")
    with pytest.raises(SourceError) as err:
        get_reader(fmt).plan("src", [missing], None, {})
    assert err.value.path == missing and err.value.format == fmt and fmt in str(err.value)


def test_samples_fit_the_canonical_arrow_schema(tmp_path):
    from vilaray.data.schema import CANONICAL

    pairs = write_parquet(tmp_path / "p.parquet", {"text": ["t"], "image": [A]})
    chats = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    rows = read_all("pairs_parquet", [pairs])[0] + read_all("messages_jsonl", [chats])[0]
    assert pa.Table.from_pylist(rows, schema=CANONICAL).num_rows == 2


def test_ids_are_stable_across_runs(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"line {i}"} for i in range(5)])
    first = [s["id"] for s in read_all("text_jsonl", [path])[0]]
    assert first == [s["id"] for s in read_all("text_jsonl", [path])[0]] == [f"t.jsonl:{i}" for i in range(5)]
