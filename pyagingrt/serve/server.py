"""Binding pyagingrt engines to Triton Inference Server through PyTriton, and running it until SIGTERM.

    settings = ServeSettings(max_batch=32, http_port=8000)
    serve(engine, "acgan", settings)   # blocks; SIGTERM or Ctrl+C stop it gracefully

Start-up order: the engine is built and warmed up (CUDA graphs captured) by the caller and here, before
Triton starts, so /v2/health/ready answers 200 only when the first request will be fast. On SIGTERM Triton
stops taking requests and answers the ones in flight (up to ``exit_timeout_s``) before the process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .libpython import prepare_stub_environment
from .models import CropsModel, PhotoLimits, PhotosModel, TensorSpec

__all__ = ["LockedEngine", "ServeSettings", "model_names", "running_triton", "serve", "warm_up"]

log = logging.getLogger("pyagingrt.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Where and how to serve (see ``agingrt serve --help``)."""

    max_batch: int = 32
    max_queue_delay_us: int = 2000
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    web_port: int | None = 8080  # None: no web page
    exit_timeout_s: int = 30
    photos: bool = True
    limits: PhotoLimits = dataclasses.field(default_factory=PhotoLimits)
    log_verbose: int = 0
    random_weights: bool = False  # shown on the page: the output is meaningless


def model_names(name: str) -> tuple[str, str]:
    """The two Triton model names of a served engine: ``<name>_crops`` and ``<name>_photos``."""
    return f"{name}_crops", f"{name}_photos"


class LockedEngine:
    """An engine whose ``age`` runs one call at a time: the crops and photos models run in their own threads,
    and a native engine replays CUDA graphs over static buffers, which two threads must not share."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    def age(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._engine.age(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def warm_up(engine: Any, max_batch: int) -> None:
    """Run the engine at batch 1 and ``max_batch`` (and each native bucket on the way) before serving."""
    import torch

    size = int(engine.input_size)
    age = engine.age_groups[-1].representative_age()
    for batch in sorted({1, *getattr(engine, "buckets", ()), max_batch}):
        if batch <= max_batch:
            engine.age(torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), age, seed=0)


def _tensors(specs: list[TensorSpec]) -> list[Any]:
    from pytriton.model_config import Tensor

    return [Tensor(name=s.name, dtype=s.dtype, shape=s.shape, optional=s.optional) for s in specs]


def _bind(triton: Any, name: str, model: CropsModel | PhotosModel, settings: ServeSettings) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig

    config = ModelConfig(
        max_batch_size=settings.max_batch,
        batcher=DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us),
    )
    triton.bind(
        model_name=name, infer_func=model, inputs=_tensors(model.inputs), outputs=_tensors(model.outputs), config=config
    )


@contextlib.contextmanager
def running_triton(engine: Any, name: str, settings: ServeSettings) -> Iterator[Any]:
    """Triton serving ``engine`` as ``<name>_crops`` (and ``<name>_photos``), ready on exit of ``with``'s entry."""
    prepare_stub_environment()  # LibpythonError (with what to do) before Triton fails obscurely
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        http_address=settings.host,
        http_port=settings.http_port,
        grpc_address=settings.host,
        grpc_port=settings.grpc_port,
        metrics_address=settings.host,
        metrics_port=settings.metrics_port,
        exit_timeout_secs=settings.exit_timeout_s,
        log_verbose=settings.log_verbose,
    )
    shared = LockedEngine(engine)
    crops_name, photos_name = model_names(name)
    with Triton(config=config) as triton:
        _bind(triton, crops_name, CropsModel(shared), settings)
        if settings.photos:
            _bind(triton, photos_name, PhotosModel(shared, settings.limits), settings)
        triton.run()  # starts the server and loads the models; returns when they are ready
        yield triton


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def serve(engine: Any, name: str, settings: ServeSettings, ready: Any = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully (in-flight requests are answered)."""
    from .web import WebServer

    def on_signal(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with running_triton(engine, name, settings) as triton:
            web = None
            if settings.web_port is not None:
                web = WebServer(
                    settings.host, settings.web_port, settings.http_port, name, engine, settings.random_weights
                )
                web.start()
            if ready is not None:
                ready(web)
            try:
                stop = threading.Event()
                while triton.is_alive() and not stop.wait(1.0):
                    pass
            except _Stop as exc:
                log.info("%s received: answering the requests in flight, then stopping", exc)
            finally:
                if web is not None:
                    web.stop()
    except _Stop as exc:  # a signal during start-up
        log.info("%s received during start-up: stopping", exc)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
