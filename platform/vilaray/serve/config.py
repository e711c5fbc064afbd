"""Typed settings of a served export: where it is, request limits, replicas and autoscaling, the API key."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    """Caps on what one request may ask for; past them a request gets a 4xx naming the limit."""

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_images: int = Field(8, ge=0)
    max_image_bytes: int = Field(4 * 1024 * 1024, ge=1)
    # Checked from the image header before anything is decoded: a decompression bomb costs nothing.
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_tokens: int = Field(256, ge=1)
    default_max_tokens: int = Field(64, ge=1)


class ImageFetch(_Strict):
    """http(s) image URLs: refused unless their host is listed, then fetched without redirects, within
    `timeout_s` and the byte cap. Listing a host lets clients make this server request its URLs."""

    allow_hosts: list[str] = []  # "images.example.com" or "host:port", matched exactly
    timeout_s: float = Field(5.0, gt=0)


class Autoscaling(_Strict):
    """Ray Serve's `autoscaling_config` for the model replicas (Serve's defaults scale slowly: 30 s up,
    600 s down)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    # Longer than the metrics interval, which Serve will require.
    look_back_period_s: float = Field(30.0, gt=0)
    # How often replicas and handles report load (Serve deprecates the field for the env vars
    # RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S, which must match it).
    metrics_interval_s: float = Field(10.0, gt=0)


class ServeConfig(_Strict):
    model: str  # export directory (absolute on a cluster: replicas run in their own directories)
    model_name: str | None = None  # the `model` id clients send and /v1/models lists
    limits: Limits = Limits()
    image_fetch: ImageFetch = ImageFetch()
    autoscaling: Autoscaling = Autoscaling()
    num_cpus: float = Field(1.0, gt=0)  # per model replica
    num_gpus: float = Field(0.0, ge=0)  # per model replica; the model goes to the GPU when it has one
    # Requests one `generate` call of a replica serves together (dynamic batching; 1 turns it off), and how
    # long an idle replica waits for a burst to gather before it starts.
    max_batch_size: int = Field(8, ge=1)
    batch_wait_s: float = Field(0.005, ge=0)
    # Requests a replica holds behind its running batch; the next one gets 429 with Retry-After.
    max_waiting: int = Field(8, ge=0)
    # What Serve lets a replica hold (default: its batch + max_waiting + 4, so the replica answers 429 itself).
    max_ongoing_requests: int | None = Field(None, ge=1)
    # Requests Serve's router holds while every replica is full; past them the ingress answers 503.
    max_queued_requests: int = Field(16, ge=-1)
    # A request's whole reply must end within this (else 408, or an SSE error event once streaming).
    request_timeout_s: float = Field(300.0, gt=0)
    # The HTTP ingress in front of the model replicas: parsing, images, auth; light, so a fraction of a CPU.
    ingress_replicas: int = Field(1, ge=1)
    ingress_cpus: float = Field(0.1, ge=0)
    # On shutdown or a redeploy, a replica stops taking requests and lets in-flight ones finish this long.
    drain_timeout_s: float = Field(20.0, ge=0)
    # Bearer key: read from this environment variable or file, never written in the config itself.
    api_key_env: str = "VILARAY_API_KEY"
    api_key_file: str | None = None

    @property
    def served_name(self) -> str:
        """`model_name`, else the export directory's name, or its stage's for `<run>/<stage>/export`."""
        path = Path(self.model)
        return self.model_name or (path.parent.name if path.name == "export" else path.name)

    def api_key(self) -> str | None:
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip() or None
        return os.environ.get(self.api_key_env) or None
