"""Run ``medseg serve`` in a background process, e.g. from a notebook or a benchmark.

`BackgroundService` starts ``python -m medseg_helpers.cli serve MODEL ...`` on a free
loopback port, waits until ``GET /health`` answers, and stops the process (SIGTERM, then
SIGKILL) when leaving the ``with`` block. It never hangs: if the server process exits
(e.g. the port was taken between choosing and binding it) or does not answer within
``start_timeout_s``, it raises `ServiceStartError` with the tail of the server's log. The
server's output goes to a log file, not a pipe, so a chatty server cannot block::

    with BackgroundService("model.onnx", num_classes=3, log_dir=run_dir) as service:
        httpx.get(f"{service.url}/health")
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["BackgroundService", "ServiceStartError", "free_port"]


class ServiceStartError(RuntimeError):
    """The service process exited or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundService:
    """``medseg serve`` as a child process on ``127.0.0.1``.

    Args:
        model_path: ``.onnx`` file to serve.
        num_classes: classes including background.
        port: TCP port; None: a free one (`free_port`).
        log_dir: folder for ``service-<port>.log``; None: the current directory.
        start_timeout_s: how long to wait for ``/health``.
        extra_args: more ``medseg serve`` flags, e.g. ``["--max-concurrency", "4"]``.
        env: extra environment variables for the child (e.g. ``OMP_NUM_THREADS``).

    Attributes:
        url: ``http://127.0.0.1:<port>`` once started.
        log_path: the server's combined stdout/stderr.
    """

    def __init__(self, model_path: str | os.PathLike, *, num_classes: int,
                 port: int | None = None, log_dir: str | os.PathLike | None = None,
                 start_timeout_s: float = 90.0, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no model file {self.model_path}")
        self.num_classes, self.start_timeout_s = num_classes, start_timeout_s
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or ".") / f"service-{self.port}.log"
        self.extra_args, self.env = list(extra_args), dict(env or {})
        self.process: subprocess.Popen | None = None

    def start(self) -> BackgroundService:
        """Start the server and wait for ``/health``.

        Raises:
            ServiceStartError: the process exited or stayed unhealthy for
                ``start_timeout_s`` (the process is stopped; the message quotes its log).
        """
        command = [sys.executable, "-m", "medseg_helpers.cli", "serve", str(self.model_path),
                   "--num-classes", str(self.num_classes), "--host", "127.0.0.1",
                   "--port", str(self.port), *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env})
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ServiceStartError(f"the service exited with code {self.process.returncode}"
                                        f" before answering:\n{self._log_tail()}")
            if self._healthy():
                logger.info("service up at %s (pid %d)", self.url, self.process.pid)
                return self
            time.sleep(0.2)
        self.stop()
        raise ServiceStartError(f"no answer from {self.url}/health within "
                                f"{self.start_timeout_s:.0f} s:\n{self._log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> BackgroundService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
