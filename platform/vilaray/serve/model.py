"""The model deployment behind the ingress: the export loaded once per replica, dynamic batching, admission
(429 past its batch and queue), the prompt checked against the context, and the reply as a stream of events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ray import serve

from vilaray.serve.config import ServeConfig
from vilaray.serve.errors import APIError
from vilaray.serve.metrics import serve_metrics


@serve.deployment
class ChatModel:
    """One replica: one batched generation at a time (up to `max_batch_size` requests) and up to `max_waiting`
    requests behind it; one more is refused at once with 429 and Retry-After."""

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
        self.admitted = 0  # requests between admission and their reply's end

    async def chat(
        self, messages: list[dict], images: list[bytes], params, stops: list[str]
    ) -> AsyncIterator[tuple[str, object]]:
        """("text", delta) events, then ("finish", (finish_reason, usage)). Template messages and image bytes
        in, rendered with the export's own chat template and processor, as training rendered them."""
        release = self._admit()
        try:
            inputs = await asyncio.to_thread(self.model.chat_inputs, messages, images)
            prompt = int(inputs["input_ids"].shape[1])
            cap = params.max_new_tokens
            if self.model.context_length and prompt + cap > self.model.context_length:
                raise APIError(400, f"prompt of {prompt} tokens + max_tokens {cap} exceeds the model's context of "
                               f"{self.model.context_length}", "messages", "context_length_exceeded")  # fmt: skip
        except BaseException:
            release()
            raise
        async for event in self._generate(inputs, prompt, params, stops, release):
            yield event

    def _admit(self):
        """Count the request in, or refuse it with 429 when the batch and its queue are full; returns the
        release to call once when the request ends (however it ends)."""
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

    async def _generate(self, inputs: dict, prompt: int, params, stops: list[str], release):
        from vilaray.serve.reply import ReplyText

        reply = ReplyText(self.model.tok, self.model.stop_ids, stops)
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
