"""Fixtures for the serving tests: a tiny AcGAN checkpoint, and `agingrt serve` running in a subprocess.

The tests marked ``serve`` start Triton through PyTriton. They are skipped, with the reason, where PyTriton is
not installed or the interpreter has no usable shared libpython; `.ci/run` runs them in a second virtual
environment made from Debian's /usr/bin/python3.11, where they run for real.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = "AGINGRT_REQUIRE_SERVE_TESTS"  # set by .ci/run in its serving venv: a skip would be a failure there


def _serve_skip_reason() -> str | None:
    if importlib.util.find_spec("pytriton") is None:
        return (
            "PyTriton is not installed here (pip install 'pyagingrt[serve]' in a Python with a shared libpython; "
            ".ci/run runs these tests in a venv from /usr/bin/python3.11)"
        )
    from pyagingrt.serve.libpython import LibpythonError, prepare_stub_environment

    try:
        prepare_stub_environment()
    except LibpythonError as exc:
        return f"this interpreter cannot host Triton's Python backend: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    serve_items = [item for item in items if item.get_closest_marker("serve") is not None]
    if not serve_items:
        return
    reason = _serve_skip_reason()
    if reason is not None:
        if os.environ.get(REQUIRED):  # CI: these tests must run, not skip
            raise pytest.UsageError(f"{REQUIRED} is set but the serving tests cannot run: {reason}")
        for item in serve_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (free when asked; fine for tests)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    """A running `agingrt serve` subprocess and its ports."""

    process: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    web: int
    log: Path
    log_file: Any

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web}/"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


def start_server(checkpoint: Path, log: Path, *extra: str, timeout: float = 180) -> Server:
    """Start `python -m pyagingrt serve` on free loopback ports; wait until Triton says ready."""
    http, grpc, metrics, web = free_ports(4)
    cmd = [
        sys.executable, "-m", "pyagingrt", "serve", "--checkpoint", str(checkpoint), "--max-batch", "16",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--web-port", str(web),
        *extra,
    ]  # fmt: skip
    out = log.open("w")
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    server = Server(process, http, grpc, metrics, web, log, out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out.close()
            raise RuntimeError(f"agingrt serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if server.ready() and "agingrt: serving" in log.read_text():
            return server
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"agingrt serve was not ready after {timeout} s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server, timeout: float = 60) -> int:
    """SIGTERM, then wait; returns the exit code (kills it after ``timeout``)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    server.log_file.close()
    return server.process.returncode


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny AcGAN with random weights, saved, so the server and the test use the same weights."""
    import warnings

    import torch

    import pyagingrt

    path = tmp_path_factory.mktemp("serve") / "acgan-tiny.safetensors"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        pyagingrt.load("acgan", config="tiny", device="cpu").save(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    import pyagingrt

    return pyagingrt.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory) -> Iterator[Server]:
    """One server for the session's read-only tests: tiny AcGAN, photos up to 1 MB, 20 ms queue delay."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = start_server(tiny_checkpoint, log, "--max-image-mb", "1", "--max-queue-delay-us", "20000")
    yield srv
    with contextlib.suppress(Exception):
        stop_server(srv)
