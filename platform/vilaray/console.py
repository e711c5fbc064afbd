"""The console is for people: jobs print vilaray's own lines; Ray's internal logs go to files in the run dir.

Three channels would otherwise reach a job's console: the driver's own Python loggers (Ray's handlers write
to stderr), every worker's stdout/stderr forwarded by Ray (`log_to_driver`: C++ `core_worker` lines,
Ray Train's controller and placement-group cleaner, model-loading bars), and Python warnings (Ray's
deprecation warnings). `quiet_console` routes the first and third into `<run dir>/logs/driver.log` and
the driver's native stderr (Ray's C++ core) into `driver-native.log`; jobs
start Ray with `log_to_driver=False`, so worker output stays in Ray's session log files, which
`<run dir>/logs/ray` links to. Progress comes to the console from the run's own records instead
(`vilaray.train.progress`), and a failing worker's traceback from the exception Ray Train raises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Driver-side loggers whose records are internals, not progress: each gets the file handler only.
INTERNAL_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "py.warnings", "DeepSpeed")
DRIVER_LOG = "driver.log"
NATIVE_LOG = "driver-native.log"  # fd 2 of the driver: Ray's C++ core, a local Ray's raylet and GCS


def logs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "logs"


def quiet_console(run_dir: Path) -> Path:
    """Send Ray's driver-side log records and Python warnings to `<run_dir>/logs/driver.log`; returns the
    folder. Idempotent: a second call (the next stage, another job in the process) moves the file."""
    folder = logs_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / DRIVER_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("vilaray-internal")
    _import_deepspeed_into(folder / DRIVER_LOG)
    for name in INTERNAL_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            if old.get_name() == handler.get_name():  # ours from an earlier call: release its file
                old.close()
        logger.addHandler(handler)
        logger.propagate = False
    logging.captureWarnings(True)  # warnings.warn(...) -> the `py.warnings` logger -> the file
    _quiet_transformers()
    route_native_stderr(folder)
    return folder


def route_native_stderr(folder: Path) -> None:
    """Ray's C++ core inside the driver writes its ERROR lines straight to file descriptor 2 (e.g. about
    Ray Data's actor pools), and a local Ray's raylet and GCS inherit it. Point fd 2 at
    `<folder>/driver-native.log` and keep Python's `sys.stderr` (tracebacks, vilaray's errors) on the
    terminal. Left alone when stderr is already redirected in-process (a test's capture)."""
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # a StringIO or a capture object: not the terminal
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(folder / NATIVE_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace")


def _import_deepspeed_into(log: Path) -> None:
    """DeepSpeed's logger writes to stdout from its import on (which accelerator it picked, op checks):
    import it with stdout pointed at the log, so its handler can be swapped for ours like Ray's."""
    with contextlib.suppress(ImportError), log.open("a") as f, contextlib.redirect_stdout(f):
        import deepspeed  # noqa: F401


def _quiet_transformers() -> None:
    """No weight-loading progress bars on the driver (evaluation with the local backend loads models)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def link_ray_session_logs(run_dir: Path) -> Path | None:
    """`<run_dir>/logs/ray` -> this Ray session's log folder (workers' stdout/stderr, raylet, GCS), when
    the session runs on this machine (a local Ray, or a job driver on the head node)."""
    try:
        import ray

        session = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
    except Exception:  # not initialised, or a client connection: nothing local to link
        return None
    link = logs_dir(run_dir) / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(session / "logs", target_is_directory=True)
    return link


@contextlib.contextmanager
def point_to_logs_on_failure(run_dir: Path) -> Iterator[None]:
    """On an exception, say where Ray's logs are before it propagates (its traceback still prints)."""
    try:
        yield
    except BaseException:
        folder = logs_dir(run_dir)
        print(
            f"Ray's logs for this run: {folder / 'ray'} (workers, raylet), "
            f"{folder / DRIVER_LOG} and {folder / NATIVE_LOG} (driver)",
            file=sys.stderr,
            flush=True,
        )
        raise
