"""The Serve application: OpenAI's chat completions routes (FastAPI ingress) on replicas holding the export."""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations as types.

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
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


class BodyTooLarge(HTTPException):
    """A body that grew past `max_body_bytes` while it was read (a chunked upload declares no length). An
    HTTPException, so FastAPI's body parsing passes it on instead of calling it a parse error."""

    def __init__(self, cap: int):
        super().__init__(413, f"request body is over max_body_bytes {cap} (counted as it arrived)")


@app.exception_handler(BodyTooLarge)
async def _too_large(_request: Request, err: BodyTooLarge) -> JSONResponse:
    return APIError(413, err.detail).response()


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


class CountedBody:
    """ASGI middleware: counts a request body's bytes as they arrive and stops reading past the cap, so a
    chunked upload (no Content-Length to refuse up front) is cut off at `max_body_bytes`, not buffered whole."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        cap = getattr(scope["app"].state, "max_body_bytes", None) if scope["type"] == "http" else None
        if cap is None:
            return await self.app(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        return await self.app(scope, counted, send)


app.add_middleware(CountedBody)


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


class Events:
    """The model replica's event stream as the ingress reads it: its errors as `APIError`s (Serve's
    back-pressure as 503 with Retry-After, the request's deadline as 408), the stream cancelled when the
    reader stops early."""

    def __init__(self, stream, deadline: float):
        self.stream, self.deadline = stream, deadline

    async def next(self) -> tuple[str, object]:
        from ray.serve.exceptions import BackPressureError

        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(self.stream.__anext__(), remaining)
        except TimeoutError:
            self.stream.cancel()
            raise APIError(
                408, "the reply did not finish within the request timeout", code="timeout"
            ) from None
        except BackPressureError:
            raise APIError(503, "every model replica's queue is full; retry shortly", code="overloaded",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        except StopAsyncIteration:
            raise
        except Exception as err:
            cause = getattr(err, "cause", err)  # a model replica's own APIError, as raised there
            if isinstance(cause, APIError):
                raise APIError(cause.status, cause.message, cause.param, cause.code, cause.headers) from None
            raise

    async def after(self, first: tuple[str, object]) -> AsyncIterator[tuple[str, object]]:
        yield first
        try:
            while True:
                try:
                    event = await self.next()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self.stream.cancel()


# `Events` (and everything else the routes use) is defined above the ingress: `serve.ingress` freezes a copy
# of the app, its routes' globals pickled, when it decorates the class, so those names must exist by then.
@serve.deployment
@serve.ingress(app)
class ChatIngress:
    """The HTTP side, in front of the model replicas: API key, request checks and image decoding (and
    fetching) before a model replica is involved; Serve's back-pressure and the request deadline answered in
    OpenAI's envelope (503 with Retry-After, 408) instead of Serve's plain text; SSE streaming."""

    def __init__(self, config: dict, model):
        self.cfg = ServeConfig(**config)
        self.model = model.options(stream=True)
        self.key = self.cfg.api_key()
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
        deadline = time.monotonic() + self.cfg.request_timeout_s
        messages, images, cap = await self._checked(body)
        params = SamplingParams(cap, body.temperature, body.top_p, body.seed)
        events = Events(self.model.chat.remote(messages, images, params, body.stops()), deadline)
        # The first event decides the status line: a refusal from the model replica (429, a prompt past the
        # context), back-pressure (503) or the deadline (408) still gets its own status and envelope.
        first = await events.next()
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            sse = self._sse(events.after(first), reply_id, created, include_usage)
            return StreamingResponse(sse, media_type="text/event-stream")
        text, finish, usage = "", None, None
        async for kind, value in events.after(first):
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

    async def _checked(self, body: ChatCompletionRequest) -> tuple[list[dict], list[bytes], int]:
        """Checks that need no model, then the messages parsed as the training reader parses them."""
        from vilaray.serve.images import template_request

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
        # In a thread: an allowed http(s) image is fetched while parsing.
        messages, images = await asyncio.to_thread(template_request, raw, limits, self.cfg.image_fetch)
        return messages, images, cap

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
        except APIError as err:  # the status line is sent: an error now goes out as an SSE event
            yield f"data: {json.dumps(err.body())}\n\n"
        except Exception as err:
            yield f"data: {json.dumps(APIError(500, f'generation failed: {type(err).__name__}').body())}\n\n"
        yield "data: [DONE]\n\n"


def build_app(config: dict) -> serve.Application:
    """`serve run vilaray.serve.app:build_app model=...` and `serve/config.yaml` enter here: the ingress
    (HTTP) in front of the model replicas (autoscaled)."""
    from vilaray.serve.model import ChatModel

    cfg = ServeConfig(**config)
    scale = cfg.autoscaling
    model = ChatModel.options(
        autoscaling_config=scale.model_dump(),
        # Requests past a replica's batch and queue get its own 429; Serve's limit sits above that, and its
        # router queue above that answers BackPressureError, which the ingress turns into a 503 envelope.
        max_ongoing_requests=cfg.max_ongoing_requests or cfg.max_batch_size + cfg.max_waiting + 4,
        max_queued_requests=cfg.max_queued_requests,
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(cfg.model_dump())
    return ChatIngress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=1024,
        graceful_shutdown_timeout_s=cfg.drain_timeout_s,
        ray_actor_options={"num_cpus": cfg.ingress_cpus},
    ).bind(cfg.model_dump(), model)
