"""The endpoint's Ray metrics, exported with Ray's own (the dashboard's Prometheus endpoint, Grafana): requests
by route and status, their latency, time to first token, generated tokens and decode rate, batch sizes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

ROUTES = ("/v1/chat/completions", "/v1/models", "/health")
SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


def route_of(path: str) -> str:
    """The route a path hit, whatever prefix the app is mounted under; anything else is "other" (a tag per
    unknown path would let clients grow the metric without bound)."""
    return next((r for r in ROUTES if path.endswith(r)), "other")


@dataclass(frozen=True)
class ServeMetrics:
    requests: object  # ray.util.metrics.Counter, tags route, status
    latency: object  # Histogram: time to the response's headers (a stream's first byte), tag route
    ttft: object  # Histogram: admission to the first generated token
    tokens: object  # Counter: completion tokens
    decode_rate: object  # Histogram: a reply's tokens per second after its first
    batch_size: object  # Histogram: requests per generate call

    def request(self, path: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.inc(1, tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})

    def reply(self, ttft_s: float | None, tokens: int, decode_s: float) -> None:
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.tokens.inc(tokens)
        if tokens > 1 and decode_s > 0:
            self.decode_rate.observe((tokens - 1) / decode_s)


@functools.cache
def serve_metrics() -> ServeMetrics:
    """Created once per replica process, on first use (Ray metrics need the worker's Ray)."""
    from ray.util.metrics import Counter, Histogram

    return ServeMetrics(
        requests=Counter(
            "vilaray_serve_requests", "HTTP requests by route and status", tag_keys=("route", "status")
        ),
        latency=Histogram(
            "vilaray_serve_request_seconds",
            "time to the response headers (a stream's first byte)",
            boundaries=SECONDS,
            tag_keys=("route",),
        ),  # fmt: skip
        ttft=Histogram(
            "vilaray_serve_ttft_seconds", "admission to the first generated token", boundaries=SECONDS
        ),
        tokens=Counter("vilaray_serve_generated_tokens", "completion tokens generated"),
        decode_rate=Histogram(
            "vilaray_serve_decode_tokens_per_second",
            "a reply's tokens/s after its first",
            boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500],
        ),  # fmt: skip
        batch_size=Histogram(
            "vilaray_serve_batch_size", "requests per generate call", boundaries=[1, 2, 4, 8, 16, 32, 64]
        ),  # fmt: skip
    )
