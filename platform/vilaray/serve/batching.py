"""Dynamic batching inside a model replica: requests that arrive while a batch generates wait, and the next
`generate` call takes up to `max_batch_size` of them (equal sampling settings), streaming each row's tokens to
its own request as they come."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from vilaray.evals.generate import EvalModel, SamplingParams

_END = object()


@dataclass(eq=False)
class _Request:
    inputs: dict
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    sent: int = 0
    done: bool = False  # its stop id or its cap came (set by the generation thread)
    # Set by the request's consumer when it stops reading (its reply ended, or the client left); read by
    # the generation thread, which then stops feeding this row.
    gone: bool = False

    def wants_more(self) -> bool:
        return not (self.gone or self.done)

    def give(self, item) -> None:
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, item)


class Batcher:
    """One generation at a time per replica; each takes every compatible waiting request, up to
    `max_batch_size`, in arrival order. `wait_s` lets a burst gather before an idle replica starts."""

    def __init__(
        self,
        model: EvalModel,
        max_batch_size: int,
        wait_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.model, self.max_batch, self.wait_s, self.on_batch = model, max_batch_size, wait_s, on_batch
        self.waiting: list[_Request] = []
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.batch_sizes: Counter[int] = Counter()  # generate calls by batch size

    async def stream(self, inputs: dict, params: SamplingParams) -> AsyncIterator[int]:
        """The request's generated token ids (its stop id included), at most `params.max_new_tokens`."""
        req = _Request(inputs, params, asyncio.get_running_loop())
        self.waiting.append(req)
        self.wakeup.set()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._run())
        try:
            while (item := await req.tokens.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            req.gone = True
            if req in self.waiting:
                self.waiting.remove(req)

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            batch = self._take()
            if not self.waiting:
                self.wakeup.clear()
            if batch:
                self.batch_sizes[len(batch)] += 1
                if self.on_batch:
                    self.on_batch(len(batch))
                await asyncio.to_thread(self._generate, batch)

    def _take(self) -> list[_Request]:
        live = [r for r in self.waiting if not r.gone]
        if not live:
            self.waiting.clear()
            return []
        key = live[0].params.batch_key()
        batch = [r for r in live if r.params.batch_key() == key][: self.max_batch]
        self.waiting = [r for r in live if r not in batch]
        return batch

    def _generate(self, batch: list[_Request]) -> None:
        """In a worker thread: one `generate` for the batch, each step's token handed to its row."""

        stop_ids = set(self.model.stop_ids)

        def emit(tokens: list[int]) -> bool:
            for req, token in zip(batch, tokens):
                if req.wants_more():
                    req.sent += 1
                    req.give(token)
                    # A row ends at its own stop id or cap, not when the whole batch does (generate pads
                    # finished rows until the last one stops).
                    if token in stop_ids or req.sent == req.params.max_new_tokens:
                        req.done = True
                        req.give(_END)
            return any(r.wants_more() for r in batch)

        cap = max(r.params.max_new_tokens for r in batch)
        params = SamplingParams(cap, batch[0].params.temperature, batch[0].params.top_p, batch[0].params.seed)
        try:
            self.model.stream_batch([r.inputs for r in batch], params, emit)
        except BaseException as err:  # surfaced to every request of the batch, not lost in the thread
            for req in batch:
                req.give(err)
            return
        for req in batch:
            if not req.done:
                req.give(_END)
