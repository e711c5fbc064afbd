"""Ray Serve's OpenAI-compatible endpoint on the session's SFT export, through the real `openai` client:
replies, streaming, images, usage, stop and length, the harness's own reply, bad requests, the API key, and
`jobs/serve.py` draining on SIGTERM, and `serve run serve/config.yaml` from a clone."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml
from conftest import ROOT, free_port
from PIL import Image

pytestmark = pytest.mark.slow
NAME = "tiny-sft"
# As README.md shows it: the config file cannot name a local code path, so the command line ships vilaray.
SERVE_RUN = """serve run --runtime-env-json '{"py_modules": ["platform/vilaray"]}' serve/config.yaml"""


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png(color=(255, 0, 0), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_server():
    """A loopback web server for http(s) image URLs: a PNG, one over the byte cap, a slow one, a 404 and a
    redirect."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/red.png":
                self._send(200, png())
            elif self.path == "/big.png":
                self._send(200, b"\x89PNG" + b"0" * (5 * 1024 * 1024))
            elif self.path == "/slow.png":
                time.sleep(3)
                self._send(200, png())
            elif self.path == "/moved.png":
                self.send_response(302)
                self.send_header("Location", "/red.png")
                self.end_headers()
            else:
                self._send(404, b"no")

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def served(ray_session, tiny_run, tmp_path_factory, image_server):
    """Two apps on one Serve instance of the session's Ray: the SFT export open (fetching http images from
    the loopback image server only), and the same export behind an API key read from a file."""
    from ray import serve
    from vilaray.serve.app import build_app

    export = tiny_run.exports["sft"]
    key_file = tmp_path_factory.mktemp("serve") / "key"
    key_file.write_text("s3cret-key\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"model": str(export), "model_name": NAME, "num_cpus": 0.25, "limits": {"max_tokens": 48}}
    fetch = {"allow_hosts": [image_server], "timeout_s": 1.0}
    serve.run(build_app({**common, "image_fetch": fetch}), name="open", route_prefix="/")
    # The keyed app also has the smallest capacity (one request generating, one waiting): the overload test
    # fills it.
    keyed = {**common, "api_key_file": str(key_file), "max_batch_size": 1, "max_waiting": 1}
    serve.run(build_app(keyed), name="keyed", route_prefix="/keyed")
    base = f"http://127.0.0.1:{port}"
    yield base, export
    serve.shutdown()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def vqa(small_world_dir) -> list[tuple[bytes, str]]:
    """(image bytes, question) pairs of the held-out VQA split."""
    root = small_world_dir / "eval" / "vqa"
    questions = json.loads((root / "questions.json").read_text())["questions"][:12]
    # shapes_val_000000000001.png -> image id 1
    images = {int(p.stem.rsplit("_", 1)[1]): p for p in (root / "images").iterdir()}
    return [(images[q["image_id"]].read_bytes(), q["question"]) for q in questions]


def ask(image: bytes | None, text: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}] if image else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def image_only(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


def test_openapi_schema_carries_the_limits(served):
    schema = httpx.get(f"{served[0]}/openapi.json", timeout=10).json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    for key in ("max_tokens", "max_completion_tokens"):
        (integer,) = [b for b in request["properties"][key]["anyOf"] if b.get("type") == "integer"]
        assert integer.get("maximum") == 48 and integer["minimum"] == 1, request["properties"][key]
    assert request["properties"]["n"]["maximum"] == 1 and "At most 8 images" in request["description"]
    assert schema["info"]["x-limits"]["max_tokens"] == 48 and "/v1/chat/completions" in schema["paths"]


def test_schemathesis_finds_no_server_error(served):
    """Requests generated from /openapi.json (bounded examples per route, no shrinking database): whatever
    they hold, the answer is never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{served[0]}/openapi.json")
    calls = []
    for path, method, examples in (
        ("/v1/chat/completions", "POST", 60),
        ("/v1/models", "GET", 5),
        ("/health", "GET", 5),
    ):

        @given(case=schema[path][method].as_strategy())
        @settings(
            max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_5xx(case):
            calls.append(case.call_and_validate(checks=[not_a_server_error], timeout=60).status_code)

        no_5xx()
    assert len(calls) >= 50 and all(c < 500 for c in calls)


def test_models_health_and_request_ids(served, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    r = httpx.get(f"{served[0]}/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.post(f"{served[0]}/v1/chat/completions", json={"model": NAME, "messages": ask(None, "hi")},
                   headers={"x-request-id": "mine-1"}, timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.headers["x-request-id"] == "mine-1"


def test_stream_joins_to_the_reply_with_one_finish_reason_and_usage(client, vqa):
    for image, question in vqa[:10]:
        kw = {"model": NAME, "messages": ask(image, question), "temperature": 0, "max_tokens": 16}
        whole = client.chat.completions.create(**kw)
        chunks = list(
            client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text == whole.choices[0].message.content
        assert finishes == [whole.choices[0].finish_reason] and finishes[0] in ("stop", "length")
        usage = [c.usage for c in chunks if not c.choices]
        assert len(usage) == 1 and usage[0].model_dump() == whole.usage.model_dump()


@pytest.fixture(scope="module")
def local_model(tiny_run):
    """The served export as the replicas load it, in this process."""
    from vilaray.evals.generate import EvalModel

    return EvalModel(tiny_run.exports["sft"])


def template(question: str, images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [*[{"type": "image"}] * images, {"type": "text", "text": question}]}]


def test_batcher_gives_each_row_its_own_reply_in_one_generate(local_model, vqa):
    """Dynamic batching, in one process: six requests that arrive together share one `generate` call, and
    each gets the token ids it gets alone at temperature 0 (its stop id included), cut at its own cap; one
    that leaves after its first token does not disturb the others; a text-only request joins image ones."""
    from vilaray.evals.generate import SamplingParams
    from vilaray.serve.batching import Batcher

    prompts = [local_model.chat_inputs(template(q), [image]) for image, q in vqa[:5]]
    prompts.append(local_model.chat_inputs(template("what is two plus three?", images=0), []))
    caps = [16, 16, 3, 16, 16, 16]

    async def collect(batcher, inputs, cap, leave_after=None) -> list[int]:
        out = []
        async for token in batcher.stream(inputs, SamplingParams(cap)):
            out.append(token)
            if len(out) == leave_after:
                break
        return out

    async def scenario():
        alone = Batcher(local_model, max_batch_size=1)
        solo = [await collect(alone, x, 16) for x in prompts]
        together = Batcher(local_model, max_batch_size=8, wait_s=0.05)
        rows = [
            collect(together, x, cap, 1 if i == 4 else None) for i, (x, cap) in enumerate(zip(prompts, caps))
        ]
        return solo, await asyncio.gather(*rows), alone.batch_sizes, together.batch_sizes

    solo, batched, sizes_alone, sizes_together = asyncio.run(scenario())
    assert sizes_alone == {1: 6} and sizes_together == {6: 1}
    assert all(s[-1] in local_model.stop_ids or len(s) == 16 for s in solo)
    expected = [s[:cap] for s, cap in zip(solo, caps)]
    expected[4] = solo[4][:1]
    assert batched == expected


def test_http_images_come_only_from_listed_hosts_within_limits(client, image_server):
    """The listed loopback host serves the same PNG as a data: URL, so the reply is the same; a 404, a
    redirect, a slow server, an oversized body and an unlisted host are each a 4xx naming image_url."""

    def ask_url(url: str) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what color?"}]
        return {
            "model": NAME,
            "messages": [{"role": "user", "content": parts}],
            "temperature": 0,
            "max_tokens": 6,
        }

    fetched = client.chat.completions.create(**ask_url(f"http://{image_server}/red.png"))
    inline = client.chat.completions.create(**ask_url(data_url(png())))
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens
    port = image_server.rsplit(":", 1)[1]
    cases = {
        "/missing.png": (400, "HTTP 404"),
        "/moved.png": (400, "HTTP 302"),
        "/slow.png": (400, "took over 1 s"),
        "/big.png": (413, "max_image_bytes"),
    }
    for path, (status, words) in cases.items():
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(**ask_url(f"http://{image_server}{path}"))
        assert err.value.status_code == status and words in err.value.body["message"], (path, err.value.body)
        assert err.value.body["param"] == "image_url"
    with pytest.raises(openai.BadRequestError, match="not in image_fetch.allow_hosts"):
        client.chat.completions.create(**ask_url(f"http://localhost:{port}/red.png"))


def test_concurrent_requests_get_their_sequential_replies(client, vqa):
    """Six requests at once share a replica's batches; each reply is what it gets alone (temperature 0)."""
    from concurrent.futures import ThreadPoolExecutor

    kws = [
        {"model": NAME, "messages": ask(image, q), "temperature": 0, "max_tokens": 12} for image, q in vqa[:6]
    ]

    def reply(kw: dict) -> str:
        return client.chat.completions.create(**kw).choices[0].message.content

    sequential = [reply(kw) for kw in kws]
    with ThreadPoolExecutor(len(kws)) as pool:
        assert list(pool.map(reply, kws)) == sequential


def test_usage_counts_the_processors_tokens_with_two_images(client, vqa, local_model):
    model = local_model
    (a, question), (b, _) = vqa[0], vqa[4]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(a)}},
                                             {"type": "image_url", "image_url": {"url": data_url(b)}},
                                             {"type": "text", "text": question}]}]  # fmt: skip
    reply = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=4)
    inputs = model.chat_inputs(template(question, images=2), [a, b])
    assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
    image_tokens = int((inputs["input_ids"] == model.model.config.image_token_id).sum())
    assert image_tokens == 2 * model.model.config.image_seq_length
    assert reply.usage.completion_tokens <= 4


def test_max_tokens_and_stop_strings(client, vqa):
    """On the first question whose reply runs a few tokens: a cap of 2 ends it with "length" after 2
    tokens; a stop string from its middle ends it with "stop" just before that string."""
    for image, question in vqa:
        kw = {"model": NAME, "messages": ask(image, question), "temperature": 0}
        full = client.chat.completions.create(**kw, max_tokens=24)
        text = full.choices[0].message.content
        if full.usage.completion_tokens > 3 and len(text.strip()) >= 6:
            break
    else:
        pytest.fail("no reply of more than 3 tokens to cut")
    cut = client.chat.completions.create(**kw, max_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
    assert text.startswith(cut.choices[0].message.content)
    middle = len(text) // 2
    stop = text[middle : middle + 2]
    stopped = client.chat.completions.create(**kw, max_tokens=24, stop=[stop, "never-said"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_served_reply_is_the_eval_harness_reply(client, vqa, tmp_path, local_model):
    from vilaray.evals.prompts import PromptItem
    from vilaray.evals.turns import first_line

    model = local_model
    for k, (image, question) in enumerate(vqa[:4]):
        path = tmp_path / f"q{k}.png"
        path.write_bytes(image)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        item = PromptItem(f"q{k}", "vqa", 0, json.dumps(messages), [str(path)], [], 8)
        harness = model.generate([item])[0]
        served_text = (
            client.chat.completions.create(
                model=NAME, messages=ask(image, question), temperature=0, max_tokens=8
            )
            .choices[0]
            .message.content
        )
        assert first_line(served_text) == harness


BAD = {
    "unsupported field": ({"foo": 1}, 400, "foo"),
    "n above 1": ({"n": 2}, 400, "n"),
    "empty messages": ({"messages": []}, 400, "messages"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    "content of a wrong type": ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    "unknown part type": (
        {"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]},
        400,
        "messages.0.content",
    ),
    "unknown model": ({"model": "gpt-9"}, 404, "model"),
    "temperature out of range": ({"temperature": 7}, 400, "temperature"),
    "max_tokens over the limit": ({"max_tokens": 10_000}, 400, "max_tokens"),
    "http image url": ({"messages": image_only("http://127.0.0.1:9/cat.png")}, 400, "image_url"),
    "bad base64": ({"messages": image_only("data:image/png;base64,@@@@")}, 400, "image_url"),
    "bytes that are not an image": (
        {"messages": image_only(data_url(b"hello, not a png"))},
        400,
        "image_url",
    ),
    "truncated image": ({"messages": image_only(data_url(png()[:60]))}, 400, "image_url"),
    "decompression bomb": ({"messages": image_only(data_url(png(size=(5000, 5000))))}, 400, "image_url"),
    "image placeholder smuggled in text": ({"messages": ask(None, "look: <image>")}, 400, "messages"),
    "prompt past the model's context": ({"messages": ask(None, "red star " * 3000)}, 400, "messages"),
    "a conversation with no text": ({"messages": [{"role": "user", "content": []}]}, 400, "messages"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_4xx_envelope_and_the_server_goes_on(served, client, case):
    patch, status, param = BAD[case]
    body = {"model": NAME, "messages": ask(None, "hi"), "max_tokens": 2, **patch}
    r = httpx.post(f"{served[0]}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param or err["param"].startswith(f"{param}."), err
    assert client.chat.completions.create(model=NAME, messages=ask(None, "hi"), max_tokens=2).choices


def test_non_json_and_oversized_bodies(served):
    url = f"{served[0]}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(
        url, content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]

    # A chunked upload declares no length: it is counted as it arrives and cut off past the cap, while a
    # chunked request under the cap is answered as any other.
    def chunks(body: bytes, size: int):
        yield from (body[i : i + size] for i in range(0, len(body), size))

    r = httpx.post(url, content=chunks(b"x" * (9 * 1024 * 1024), 1 << 20), timeout=30)
    assert (
        r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    )
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"], r.text
    small = json.dumps({"model": NAME, "messages": ask(None, "hi"), "max_tokens": 2}).encode()
    r = httpx.post(url, content=chunks(small, 64), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text


def test_api_key_is_required_where_configured(served):
    base = f"{served[0]}/keyed/v1"
    anonymous = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as err:
        anonymous.chat.completions.create(model=NAME, messages=ask(None, "hi"), max_tokens=2)
    assert err.value.body["code"] == "invalid_api_key"
    keyed = openai.OpenAI(base_url=base, api_key="s3cret-key", max_retries=0, timeout=60)
    assert keyed.chat.completions.create(model=NAME, messages=ask(None, "hi"), max_tokens=2).choices
    assert httpx.get(f"{served[0]}/keyed/health", timeout=10).status_code == 200  # health stays open


def test_overload_is_answered_429_with_retry_after_and_nothing_else(served):
    """8 requests at once on a replica with one place in its queue: every one is answered, within a bound,
    as a reply or as OpenAI's rate-limit envelope with Retry-After; never Serve's plain-text 503."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{served[0]}/keyed/v1/chat/completions"
    body = {
        "model": NAME,
        "messages": ask(None, "Describe a red circle."),
        "max_tokens": 48,
        "temperature": 0,
    }
    headers = {"authorization": "Bearer s3cret-key"}

    def call(_):
        return httpx.post(url, json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 2 and 429 in statuses, statuses
    for r in answers:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
            assert r.json()["error"]["code"] == "overloaded"
    assert httpx.post(url, json=body, headers=headers, timeout=120).status_code == 200  # places freed


def test_replicas_follow_the_load_and_a_rollout_keeps_answering(served, tiny_run):
    """Autoscaling with test-sized delays: four clients that never pause hold more requests than one
    replica's target, so Serve starts a second (seen in `serve.status()`); once they stop, it goes back to
    one. Then a new export (the pretrain stage's, under the same served name) is rolled out over the running
    app, as `serve deploy` of a changed config does, while two clients keep asking: every request is answered."""
    import threading

    from ray import serve
    from vilaray.serve.app import build_app

    scale = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
             "downscale_delay_s": 2, "look_back_period_s": 2, "metrics_interval_s": 0.5}  # fmt: skip
    cfg = {
        "model": str(served[1]),
        "model_name": NAME,
        "num_cpus": 0.25,
        "max_batch_size": 1,
        "autoscaling": scale,
    }
    serve.run(build_app(cfg), name="scaling", route_prefix="/scaling")

    def running() -> int:
        deployment = serve.status().applications["scaling"].deployments["ChatModel"]
        return deployment.replica_states.get("RUNNING", 0)

    def wait_for(n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while running() != n:
            assert time.monotonic() < deadline, (n, serve.status().applications["scaling"])
            time.sleep(0.5)

    stop, answered = threading.Event(), []

    def load() -> None:
        c = openai.OpenAI(base_url=f"{served[0]}/scaling/v1", api_key="x", max_retries=0, timeout=120)
        while not stop.is_set():
            c.chat.completions.create(model=NAME, messages=ask(None, "Describe a red circle."), max_tokens=32)
            answered.append(1)

    try:
        assert running() == 1
        clients = [threading.Thread(target=load) for _ in range(4)]
        for t in clients:
            t.start()
        wait_for(2, 120)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=120)
    assert answered
    wait_for(1, 120)

    statuses: list[int] = []

    def ask_loop() -> None:
        url = f"{served[0]}/scaling/v1/chat/completions"
        while not stop.is_set():
            body = {"model": NAME, "messages": ask(None, "hi"), "max_tokens": 4}
            statuses.append(httpx.post(url, json=body, timeout=120).status_code)

    stop.clear()
    clients = [threading.Thread(target=ask_loop) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        time.sleep(1)
        serve.run(
            build_app({**cfg, "model": str(tiny_run.exports["pretrain"])}),
            name="scaling",
            route_prefix="/scaling",
        )
        before = len(statuses)
        deadline = time.monotonic() + 60
        while len(statuses) < before + 2:  # answered by the new replicas too
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=120)
    assert len(statuses) >= 4 and set(statuses) == {200}, statuses
    serve.delete("scaling")


def test_back_pressure_and_deadline_are_answered_in_the_envelope(served):
    """Serve's own refusals reach clients as OpenAI errors: a model replica that takes one request at a time
    and holds it (a 5 s batch wait), a router queue of one, and a 3 s request deadline. A (streamed) runs out
    its deadline before its first token (408); of B and C one waits in the queue and runs out too (408) and
    the other finds the queue full (503 with Retry-After)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve
    from vilaray.serve.app import build_app

    cfg = {"model": str(served[1]), "model_name": NAME, "num_cpus": 0.25, "max_batch_size": 1, "batch_wait_s": 5.0,
           "max_ongoing_requests": 1, "max_queued_requests": 1, "request_timeout_s": 3.0}  # fmt: skip
    serve.run(build_app(cfg), name="tight", route_prefix="/tight")
    url = f"{served[0]}/tight/v1/chat/completions"
    body = {"model": NAME, "messages": ask(None, "hi"), "max_tokens": 2}

    def post(delay_and_stream: tuple[float, bool]) -> httpx.Response:
        delay, stream = delay_and_stream
        time.sleep(delay)
        return httpx.post(url, json={**body, "stream": stream}, timeout=60)

    try:
        # The ingress's handle finds the model replica on its first call: until then A would wait in the
        # router's queue of one and B and C would both find it full (seen on a loaded box). A prompt past the
        # context is refused by the replica itself at once, so its 400 shows the route to the replica is known.
        long = {**body, "messages": ask(None, "hi " * 4000)}
        warm = httpx.post(url, json=long, timeout=60)
        assert warm.status_code == 400 and warm.json()["error"]["code"] == "context_length_exceeded", (
            warm.text
        )
        with ThreadPoolExecutor(3) as pool:
            a, b, c = pool.map(post, ((0.0, True), (0.8, False), (2.0, False)))
        # A is never refused; which of B and C finds the queue full depends on when the replica takes A
        # (on a loaded box A can still be queued when B arrives): one of them is refused, one times out.
        assert a.status_code == 408 and sorted([b.status_code, c.status_code]) == [408, 503], (
            a.text,
            b.text,
            c.text,
        )
        timed_out = [r for r in (a, b, c) if r.status_code == 408]
        refused = next(r for r in (b, c) if r.status_code == 503)
        for r in timed_out:
            assert r.json()["error"]["type"] == "timeout_error" and r.json()["error"]["code"] == "timeout"
        assert refused.json()["error"]["type"] == "service_unavailable_error"
        assert refused.headers["retry-after"] == "1"
    finally:
        serve.delete("tight")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text from Ray's metrics endpoint: `name{label="v",...}` -> value, summed over workers."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_vilaray_serve_"):
            name, _, labels_value = line.partition("{")
            labels, _, value = labels_value.rpartition("} ")
            keep = ",".join(kv for kv in labels.split(",") if kv.split("=")[0] in ("route", "status", "le"))
            key = f"{name}{{{keep}}}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def test_serve_metrics_reach_rays_metrics_endpoint(served, client):
    """After the requests above: counts by route and status (4xx included), latency, time to first token,
    generated tokens and batch sizes, as Ray exports them (every ~10 s)."""
    import ray

    client.chat.completions.create(model=NAME, messages=ask(None, "hi"), max_tokens=2)
    port = ray.nodes()[0]["MetricsExportPort"]
    ok = 'ray_vilaray_serve_requests_total{route="/v1/chat/completions",status="200"}'
    bad = 'ray_vilaray_serve_requests_total{route="/v1/chat/completions",status="400"}'
    deadline = time.monotonic() + 60
    while (m := scrape(port)).get(ok, 0) < 10 or bad not in m:
        assert time.monotonic() < deadline, sorted(m)[:40]
        time.sleep(2)
    assert m.get('ray_vilaray_serve_requests_total{route="/v1/models",status="200"}', 0) >= 1
    assert m['ray_vilaray_serve_request_seconds_count{route="/v1/chat/completions"}'] >= m[ok]
    assert (
        m["ray_vilaray_serve_ttft_seconds_count{}"] >= 10
        and m["ray_vilaray_serve_generated_tokens_total{}"] >= 10
    )
    assert (
        m["ray_vilaray_serve_batch_size_count{}"] >= 1
        and m["ray_vilaray_serve_decode_tokens_per_second_count{}"] >= 1
    )


def test_serve_command_answers_then_drains_on_sigterm(tiny_run, tmp_path):
    """`python jobs/serve.py --model DIR --port P` as a user runs it: its own local Ray; SIGTERM ends it
    with exit 0 after the in-flight request was answered."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    cmd = [sys.executable, "jobs/serve.py", "--model", str(tiny_run.exports["sft"]), "--port", str(port),
           "--run-dir", str(tmp_path / "serve"), "--replica-cpus", "0.5"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready: "):
                break
        assert lines and lines[-1].strip() == f"ready: http://127.0.0.1:{port}/v1", "".join(lines)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        assert model == "sft"  # <run>/sft/export is served under its stage's name
        assert client.chat.completions.create(
            model=model, messages=ask(png(), "what color?"), max_tokens=4
        ).choices
        # README's curl example, as written but for the port.
        readme = (ROOT / "README.md").read_text()
        curl = readme[readme.index("```bash\ncurl -s http://127.0.0.1:8123") + len("```bash\n") :].split(
            "```"
        )[0]
        r = subprocess.run(
            ["bash", "-c", curl.replace(":8123", f":{port}")], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and json.loads(r.stdout)["choices"][0]["message"]["role"] == "assistant", r
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_a_public_address_without_an_api_key(tiny_run):
    env = {k: v for k, v in os.environ.items() if k not in ("VILARAY_API_KEY",)}
    r = subprocess.run([sys.executable, "jobs/serve.py", "--model", str(tiny_run.exports["sft"]), "--host", "0.0.0.0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "without an API key" in r.stderr


def test_serve_run_config_from_a_clone_without_vilaray(tiny_run, tmp_path):
    """README's `serve run ... serve/config.yaml` where vilaray is neither installed nor on PYTHONPATH: the
    config's application (pointed at the session's export and a free port) answers the `openai` client, and
    SIGINT stops it together with the local Ray it started."""
    assert SERVE_RUN in (ROOT / "README.md").read_text()
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"] |= {"model": str(tiny_run.exports["sft"]), "num_cpus": 0.5}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = shlex.split(SERVE_RUN)
    argv[0], argv[-1] = str(ROOT / ".venv" / "bin" / "serve"), str(path)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    assert subprocess.run([sys.executable, "-c", "import vilaray"], cwd=tmp_path, env=env).returncode != 0
    log = tmp_path / "serve-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        deadline = time.monotonic() + 240
        while True:  # the proxy answers 404 until the application is deployed
            try:
                models = client.models.list()
                break
            except (openai.APIConnectionError, openai.APIStatusError):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(1)
        assert [m.id for m in models.data] == ["sft"]
        reply = client.chat.completions.create(model="sft", messages=ask(png(), "what color?"), max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
