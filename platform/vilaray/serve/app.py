"""The Serve application: OpenAI's chat completions routes (FastAPI ingress) on replicas holding the export."""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations as types.

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from vilaray.serve.config import ServeConfig
from vilaray.serve.errors import APIError
from vilaray.serve.metrics import serve_metrics
from vilaray.serve.protocol import ChatCompletionRequest

# The schema route is the replica's own (below): it carries the replica's limits.
app = FastAPI(
    title="vilaray",
    description="OpenAI-compatible chat completions over a vilaray export",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)


@app.exception_handler(APIError)
async def _api_error(_request: Request, err: APIError) -> JSONResponse:
    return err.response()


@app.exception_handler(RequestValidationError)
async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
    """Pydantic's first complaint as a 400 naming the field (`messages.0.role`, an unknown `foo`)."""
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        message = f"unsupported field {param!r}"
    elif first.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    else:
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return APIError(400, message, param).response()


@app.middleware("http")
async def _body_cap_and_metrics(request: Request, call_next):
    """Refuse an oversized body from its Content-Length before reading it, and count every request with its
    status and latency. (Serve itself stamps every response with an `x-request-id`, the caller's own when it
    sent one.)"""
    t0, status = time.perf_counter(), 500
    try:
        cap = getattr(request.app.state, "max_body_bytes", None)
        length = request.headers.get("content-length")
        if cap is not None and length is not None and length.isdigit() and int(length) > cap:
            response = APIError(413, f"request body is {length} bytes, over max_body_bytes {cap}").response()
        else:
            response = await call_next(request)
        status = response.status_code
        return response
    finally:
        serve_metrics().request(request.url.path, status, time.perf_counter() - t0)


def limited_openapi(cfg: ServeConfig) -> dict:
    """FastAPI's schema with this replica's limits written in: `maximum` on the token caps, and the image
    and body limits in the request's description (JSON Schema cannot count images across messages)."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    limits = cfg.limits
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    for key in ("max_tokens", "max_completion_tokens"):
        for branch in request["properties"][key].get("anyOf", [request["properties"][key]]):
            if branch.get("type") == "integer":
                branch["maximum"] = limits.max_tokens
    request["description"] = (
        f"At most {limits.max_images} images per request, each at most {limits.max_image_bytes} bytes and "
        f"{limits.max_image_pixels} pixels; a body of at most {limits.max_body_bytes} bytes; prompt plus "
        f"max_tokens within the model's context. Images: data: URLs"
        + (
            f", or http(s) from {', '.join(cfg.image_fetch.allow_hosts)}."
            if cfg.image_fetch.allow_hosts
            else "."
        )
    )
    schema["info"]["x-limits"] = limits.model_dump()
    return schema


@serve.deployment
@serve.ingress(app)
class ChatServer:
    """One replica: the export loaded once (the evals' model object), one batched generation at a time (up to
    `max_batch_size` requests), up to `max_waiting` requests queued behind it; one more is answered 429 with
    Retry-After at once (Serve's own queue would answer 503 in plain text, which clients cannot read as an
    OpenAI error)."""

    def __init__(self, config: dict):
        from vilaray.evals.generate import EvalModel
        from vilaray.serve.batching import Batcher

        self.cfg = ServeConfig(**config)
        self.model = EvalModel(self.cfg.model)
        self.batcher = Batcher(
            self.model,
            self.cfg.max_batch_size,
            self.cfg.batch_wait_s,
            on_batch=serve_metrics().batch_size.observe,
        )
        self.key = self.cfg.api_key()
        self.admitted = 0  # chat requests between admission and their reply's end
        app.state.max_body_bytes = self.cfg.limits.max_body_bytes
        self.schema = limited_openapi(self.cfg)

    def _authorize(self, request: Request) -> None:
        if self.key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.key.encode()):
            raise APIError(
                401, "missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key"
            )

    @app.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(self) -> dict:
        return self.schema

    @app.get("/v1/models")
    def models(self, request: Request) -> dict:
        self._authorize(request)
        card = {"id": self.cfg.served_name, "object": "model", "created": 0, "owned_by": "vilaray"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        from vilaray.evals.generate import SamplingParams

        self._authorize(request)
        release = self._admit()
        try:
            inputs, cap = await self._inputs(body)
        except BaseException:
            release()
            raise
        params = SamplingParams(cap, body.temperature, body.top_p, body.seed)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        events = self._generate(inputs, params, body.stops(), release)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            sse = self._sse(events, reply_id, created, include_usage)
            return StreamingResponse(sse, media_type="text/event-stream")
        text, finish, usage = "", None, None
        async for kind, value in events:
            if kind == "text":
                text += value
            elif kind == "finish":
                finish, usage = value
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": self.cfg.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }

    def _admit(self):
        """Count the request in, or refuse it with 429 when the generation and its queue are full; returns
        the release to call once when the request ends (however it ends)."""
        limit = self.cfg.max_batch_size + self.cfg.max_waiting
        if self.admitted >= limit:
            raise APIError(429, f"this replica is busy ({self.admitted} requests for {limit} places); retry shortly",
                           code="overloaded", headers={"Retry-After": "1"})  # fmt: skip
        self.admitted += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done, self.admitted = True, self.admitted - 1

        return release

    async def _inputs(self, body: ChatCompletionRequest) -> tuple[dict, int]:
        """Checks that need no model first, then the prompt rendered as training rendered it."""
        from vilaray.data.readers.messages import parse_messages
        from vilaray.data.readers.records import BadRecord
        from vilaray.data.tokenize import template_messages
        from vilaray.serve.images import image_bytes

        limits = self.cfg.limits
        if body.model != self.cfg.served_name:
            raise APIError(404, f"model {body.model!r} is not served here; /v1/models lists {self.cfg.served_name!r}",
                           "model", "model_not_found")  # fmt: skip
        cap = body.token_cap(min(limits.default_max_tokens, limits.max_tokens))
        if cap > limits.max_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{param} {cap} is over this server's limit {limits.max_tokens}", param)
        raw = [m.model_dump(exclude_none=True) for m in body.messages]
        n_images = sum(
            1 for m in raw if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"
        )
        if n_images > limits.max_images:
            raise APIError(400, f"{n_images} images, over max_images {limits.max_images}", "messages")
        try:

            def to_image(ref: object) -> bytes:
                return image_bytes(ref, limits, self.cfg.image_fetch)

            # In a thread: an allowed http(s) image is fetched while parsing.
            canonical = await asyncio.to_thread(parse_messages, {"messages": raw}, to_image)
        except BadRecord as err:
            raise APIError(400, f"messages: {err}", "messages") from None
        messages, images = template_messages(canonical)
        inputs = await asyncio.to_thread(self.model.chat_inputs, messages, images)
        prompt = int(inputs["input_ids"].shape[1])
        if self.model.context_length and prompt + cap > self.model.context_length:
            raise APIError(400, f"prompt of {prompt} tokens + max_tokens {cap} exceeds the model's context of "
                           f"{self.model.context_length}", "messages", "context_length_exceeded")  # fmt: skip
        return inputs, cap

    async def _generate(
        self, inputs: dict, params, stops: list[str], release
    ) -> AsyncIterator[tuple[str, object]]:
        """("text", delta) events, then ("finish", (finish_reason, usage)); `release` when it ends."""
        from vilaray.serve.reply import ReplyText

        reply = ReplyText(self.model.tok, self.model.stop_ids, stops)
        prompt = int(inputs["input_ids"].shape[1])
        t0, first = time.perf_counter(), None
        try:
            tokens = self.batcher.stream(inputs, params)
            try:
                async for token in tokens:
                    first = first or time.perf_counter()
                    if delta := reply.add(token):
                        yield "text", delta
                    if reply.finish_reason is not None:
                        break
                else:  # the token cap
                    if delta := reply.close():
                        yield "text", delta
            finally:
                await tokens.aclose()
        finally:
            release()
            end = time.perf_counter()
            serve_metrics().reply(first and first - t0, reply.tokens, end - (first or end))
        usage = {"prompt_tokens": prompt, "completion_tokens": reply.tokens,
                 "total_tokens": prompt + reply.tokens}  # fmt: skip
        yield "finish", (reply.finish_reason, usage)

    async def _sse(self, events, reply_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None) -> str:
            body = {"id": reply_id, "object": "chat.completion.chunk", "created": created,
                    "model": self.cfg.served_name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            async for kind, value in events:
                if kind == "text":
                    yield chunk({"content": value}, None)
                else:
                    finish, usage = value
                    yield chunk({}, finish)
                    if include_usage:
                        body = {"id": reply_id, "object": "chat.completion.chunk", "created": created,
                                "model": self.cfg.served_name, "choices": [], "usage": usage}  # fmt: skip
                        yield f"data: {json.dumps(body)}\n\n"
        except Exception as err:  # the status line is sent: an error now goes out as an SSE event
            yield f"data: {json.dumps(APIError(500, f'generation failed: {err}').body())}\n\n"
        yield "data: [DONE]\n\n"


def build_app(config: dict) -> serve.Application:
    """`serve run vilaray.serve.app:build_app model=...` and `serve/config.yaml` enter here."""
    cfg = ServeConfig(**config)
    scale = cfg.autoscaling
    return ChatServer.options(
        autoscaling_config=scale.model_dump(),
        # Past the replica's own queue Serve would answer 503 in plain text: let every request reach a
        # replica (the generation, its queue, and room for /health and /v1/models) so the replica answers.
        max_ongoing_requests=cfg.max_batch_size + cfg.max_waiting + 4,
        max_queued_requests=cfg.max_queued_requests,
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(cfg.model_dump())
