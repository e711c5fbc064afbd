"""Serve an export behind an OpenAI-compatible endpoint: `python jobs/serve.py --model DIR [--port 8000]`."""

import argparse
import ipaddress
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import _bootstrap  # noqa: F401
import ray
from pydantic import ValidationError
from ray import serve
from vilaray.runtime import init_job
from vilaray.serve.app import build_app
from vilaray.serve.config import ServeConfig

APP = "vilaray"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="export directory (e.g. runs/demo/sft/export)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs an API key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", default="1:1", help="MIN:MAX model replicas (autoscaling between them)")
    p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of a local Ray")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each model replica claims")
    p.add_argument(
        "--drain-s", type=float, default=20.0, help="on SIGTERM/SIGINT, wait this long for requests"
    )
    p.add_argument("--run-dir", default="runs/serve", help="where Ray's logs go")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    lo, _, hi = args.replicas.partition(":")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise SystemExit(f"--replicas {args.replicas!r}: expected MIN:MAX, e.g. 1:4") from None
    model = Path(args.model).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json there (an export directory is expected)")
    try:
        return ServeConfig(
            model=str(model),
            num_cpus=args.replica_cpus,
            drain_timeout_s=args.drain_s,
            autoscaling={"min_replicas": low, "max_replicas": high},
        )
    except ValidationError as err:
        raise SystemExit(f"bad serving settings: {err}") from None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def drain(timeout_s: float) -> bool:
    """Delete the app (new requests refused, replicas finish their in-flight ones within their graceful
    shutdown timeout), then Serve; False when that does not finish in `timeout_s`."""

    def stop_serving() -> None:
        serve.delete(APP, _blocking=True)
        serve.shutdown()

    worker = threading.Thread(target=stop_serving, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return not worker.is_alive()


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = serve_config(args)
    if not loopback(args.host) and cfg.api_key() is None:
        print(f"refusing to bind {args.host} without an API key: set {cfg.api_key_env}", file=sys.stderr)
        return 2
    init_job(Path(args.run_dir), args.address, args.num_cpus)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(cfg.model_dump()), name=APP, route_prefix="/")
    # After Ray's start, which installs its own SIGTERM handler in the driver (it would abort the process).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = f"http://{args.host}:{args.port}"
    wait_healthy(url)
    print(f"serving {cfg.model} as {cfg.served_name!r}", flush=True)
    print(f"ready: {url}/v1", flush=True)
    stop.wait()
    print(f"stopping: draining requests (up to {args.drain_s:g} s)", flush=True)
    if not drain(args.drain_s + 30):
        # A terminal's Ctrl-C reaches a local Ray's own processes too (same process group): nothing to drain.
        print("Ray went down with the signal: stopped without draining", flush=True)
    ray.shutdown()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
