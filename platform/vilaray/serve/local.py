"""Serve on a Ray of one's own (the demo, the benchmark, tests): a free loopback port, and whether Serve runs."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on now (local servers bind 127.0.0.1 only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_running() -> bool:
    """Whether this cluster already runs Serve (a benchmark then leaves it running)."""
    from ray import serve

    status = serve.status()  # empty when Serve has not started
    return bool(status.proxies or status.applications)
