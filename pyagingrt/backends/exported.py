"""The half that ``backend="onnxruntime"`` and ``backend="openvino"`` share: run the exported ONNX graph.

At build, the model's native runner is made on the CPU from the fp32 weights (the same runner the native backend
runs, ``pyagingrt/backends/native_<model>.py``) and its inference graph for the default options is exported to
ONNX by ``pyagingrt.export`` (standard operators only, a dynamic batch axis) into a temporary folder the engine
owns; the runtime then loads that file. A call runs the runner's host-side ``prepare`` (targets, noise, blur
tables) and feeds the resulting tensors to the runtime. Options that change the graph (``runner.graph_key``,
e.g. CUSP's noise mode) get their own export on first use, cached per engine.

The weights are those of the ``training/`` module given to the engine, so parity against the torch backend is
what the tests check (tests/backends/test_exported_backends.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from abc import abstractmethod
from collections.abc import Hashable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..api import Engine
from ..errors import BackendUnavailableError
from ..models.base import ModelAdapter

#: the export's opset (the torch.onnx dynamo exporter's minimum)
OPSET = 18

logger = logging.getLogger("pyagingrt")


def export_cache_path(runner: nn.Module, config: dict[str, Any], graph_key: Hashable, batch: int | None) -> Path:
    """Where the export of this graph is kept: ``<cache>/onnx/<model>-<hash>.onnx`` under the directory of
    ``pyagingrt.backends.auto.cache_path()``, the hash covering every buffer of the runner (names, dtypes, shapes,
    bytes), the config, the graph key (the options fixed in the graph), the batch (None: dynamic) and the torch
    and pyagingrt versions. Loading the same weights again (or in the other runtime) reuses the file instead of
    exporting again. Engines with random weights (no checkpoint) keep their exports in a temporary folder instead."""
    from .._version import __version__
    from .auto import cache_path

    digest = hashlib.sha256()
    header = {"config": config, "graph_key": graph_key, "batch": batch, "opset": OPSET}
    digest.update(repr((sorted(header.items(), key=str), torch.__version__, __version__)).encode())
    for name, t in runner.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    model = getattr(runner.adapter, "name", "model")
    return cache_path().parent / "onnx" / f"{model}-{digest.hexdigest()[:24]}.onnx"


def require_module(name: str, extra: str, backend: str) -> Any:
    """``import name``, or BackendUnavailableError naming the pip command."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend={backend!r} needs the {name} package ({exc}); install it with: pip install 'pyagingrt[{extra}]'"
        ) from None


class ExportedGraphEngine(Engine):
    """An Engine that runs the model's exported ONNX graph in a runtime (subclasses: the runtime's half)."""

    #: the precision the graph is exported in, per engine precision (runtimes may lower fp32 further themselves)
    export_dtypes: ClassVar[dict[torch.dtype, torch.dtype]] = {torch.float32: torch.float32}

    def __init__(
        self,
        adapter: ModelAdapter,
        config: Any,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        *,
        config_name: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        from .native import runner_class

        # The fp32 module stays on the CPU: it is the master copy (save()) and what the runner folds for export.
        super().__init__(
            adapter, config, module, torch.device("cpu"), torch.float32, config_name=config_name, source=source
        )
        self.device, self.dtype = device, dtype
        self.runner = runner_class(adapter.name)(adapter, self.module, config, torch.device("cpu"), self.export_dtype)
        self.runner.eval()
        self._sessions: dict[tuple[Hashable, int | None], tuple[Any, tuple[str, ...]]] = {}
        self._static_keys: set[Hashable] = set()
        self.export_seconds = 0.0
        self.cached_exports = 0
        # Exports are cached only for weights that can be loaded again (from a checkpoint): random weights differ on
        # every load, so their exports go to a folder that lives as long as the engine.
        self._scratch: Path | None = None
        if source is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="pyagingrt-onnx-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)  # removed with the engine
        # export and load the default options' graph now, so a bad export fails at load and the first call is fast
        pixels, targets, gen, options = self._sample_batch(1)
        self._session_for(self._prepare(pixels, targets, gen, options), options)

    @property
    def export_dtype(self) -> torch.dtype:
        return self.export_dtypes[self.dtype]

    def _prepare(
        self, pixels: Tensor, targets: Tensor, generator: torch.Generator, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            return self.runner.prepare(pixels.cpu(), targets.cpu(), generator, options)

    def _session_for(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
        """The runtime session of the graph for these options and this batch (exported and loaded on first use).

        The graph is exported with a dynamic batch axis where ``torch.export`` allows it; a graph whose batch
        axis does not export dynamically (CUSP's grouped blur convolutions fold the batch into the channels) is
        exported once per batch size instead."""
        key = self.runner.graph_key(options)
        batch = next(iter(inputs.values())).shape[0]
        found = self._sessions.get((key, None)) or self._sessions.get((key, batch))
        if found is not None:
            return found
        graph = self.runner.graph(options, inputs)
        config = self.adapter.config_to_dict(self.config)
        no_dynamic = export_cache_path(self.runner, config, key, None).with_suffix(".nodynamic")
        if self._scratch is not None:
            no_dynamic = self._scratch / no_dynamic.name
        if no_dynamic.is_file():  # a previous load found that this graph does not export dynamically
            self._static_keys.add(key)
        if key not in self._static_keys:
            try:  # traced at batch 2: torch.export would specialise a dynamic batch axis traced at size 1
                args = tuple(torch.cat([inputs[name][:1]] * 2) for name in graph.input_names)
                self._sessions[(key, None)] = (self._export_and_load(graph, args, options, True), graph.input_names)
                return self._sessions[(key, None)]
            except Exception as exc:  # noqa: BLE001 (the exporter raises many types; any failure: export per batch)
                logger.info(
                    "%s: the graph does not export with a dynamic batch (%s); exporting per batch size",
                    self.model,
                    type(exc).__name__,
                )
                self._static_keys.add(key)
                no_dynamic.parent.mkdir(parents=True, exist_ok=True)
                no_dynamic.write_text(f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}\n")
        args = tuple(inputs[name] for name in graph.input_names)
        self._sessions[(key, batch)] = (self._export_and_load(graph, args, options, False), graph.input_names)
        return self._sessions[(key, batch)]

    def _export_and_load(self, graph: nn.Module, args: tuple[Tensor, ...], options: dict[str, Any], dynamic: bool):
        """Export the graph to ONNX (or find the same export in the cache: :func:`export_cache_path`) and load it."""
        import time

        import onnx

        from ..export.graphs import GraphSample
        from ..export.to_onnx import to_onnx_model

        t0 = time.perf_counter()
        batch = None if dynamic else args[0].shape[0]
        key = self.runner.graph_key(options)
        path = export_cache_path(self.runner, self.adapter.config_to_dict(self.config), key, batch)
        if self._scratch is not None:
            path = self._scratch / path.name
        if path.is_file():
            self.cached_exports += 1
        else:
            sample = GraphSample(self.model, self.runner, graph, args, torch.empty(0), options)
            with warnings.catch_warnings():  # torch.export's own deprecation notes are not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                # no onnxscript optimiser pass: slow on large graphs, and both runtimes optimise the graph at load
                proto = to_onnx_model(sample, dynamic_batch=dynamic, opset=OPSET, optimize=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            onnx.save_model(proto, str(tmp))
            tmp.replace(path)  # atomic: a concurrent load never reads half a file
        session = self._load(path)
        self.export_seconds += time.perf_counter() - t0
        return session

    @abstractmethod
    def _load(self, path: Path) -> Any:
        """The runtime's compiled model / session of the ONNX file at ``path``."""

    @abstractmethod
    def _infer(self, session: Any, feed: dict[str, Tensor]) -> Tensor:
        """Run the session on named CPU (or device) tensors; the output as a float32 tensor."""

    def _run(self, pixels: Tensor, targets: Tensor, generator: torch.Generator, options: dict[str, Any]) -> Tensor:
        inputs = self._prepare(pixels, targets, generator, options)  # every tensor: the batch on its first axis
        session, names = self._session_for(inputs, options)
        return self._infer(session, {name: inputs[name] for name in names})

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "runner": type(self.runner).__name__,
            "graphs": len(self._sessions),
            "dynamic_batch": any(batch is None for _, batch in self._sessions),
            "cached_exports": self.cached_exports,
            "export_s": round(self.export_seconds, 2),
            "onnx_opset": OPSET,
        }
