"""``backend="native"``: per-model inference rewrites, custom ops, fp16/bf16, CUDA graphs.

Built once per (model, precision, device) by :func:`pyagingrt.load`; CUDA graphs are captured per batch
bucket (1, 4, 16, 32 by default; smaller batches are padded into the next bucket), bucket 1 during load() so
the first call is fast. A finite-output check runs at build time in fp16/bf16 and names the first layer that
overflowed. On CPU the same rewrites run without graphs, so CPU tests cover them.

Without the compiled extension (``pyagingrt._C``) the engine refuses to build: NativeExtensionError names the
build command. The runners call the custom ops with ``impl="auto"``, which picks the compiled op whenever the
extension is loaded and no input needs a gradient (always so here: the engine runs under no_grad), so with this
check at build the native backend never runs the pure-PyTorch oracles under its name (``winograd_conv3x3``, whose
oracle is only a reference, is called with ``impl="native"`` and is off without the extension). (Built outside
this engine, e.g. by the ONNX exporter, a runner without the extension runs those standard-op forms on purpose.)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._extension import build_info, require_native
from ..api import Engine
from ..errors import InputError, NumericalError
from .cuda_graphs import DEFAULT_BUCKETS, GraphCache, check_buckets
from .runner import GenericRunner, NativeRunner

_RUNNERS = {
    "ageflow": "pyagingrt.backends.native_ageflow:AgeFlowRunner",
    "acgan": "pyagingrt.backends.native_acgan:AcGANRunner",
    "cusp": "pyagingrt.backends.native_cusp:CUSPRunner",
    "pada": "pyagingrt.backends.native_pada:PADARunner",
}


def runner_class(model: str) -> type[NativeRunner]:
    """The model's own runner, or GenericRunner while a model has none."""
    target = _RUNNERS.get(model)
    if target is None:
        return GenericRunner
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return GenericRunner
    return getattr(module, cls_name)


def _nonfinite(t: object) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


def first_nonfinite_layer(module: nn.Module, call) -> str | None:
    """Run ``call()`` with hooks on every leaf module; the name of the first whose output is not finite."""
    found: list[str] = []
    handles = []

    def hook(name):
        def check(_mod, _inp, out):
            if found:
                return
            tensors = out if isinstance(out, tuple | list) else (out,)
            if any(_nonfinite(t) for t in tensors):
                found.append(name)

        return check

    for name, sub in module.named_modules():
        if not list(sub.children()):
            handles.append(sub.register_forward_hook(hook(name)))
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


class NativeEngine(Engine):
    """An :class:`Engine` whose calls go through the model's native runner."""

    backend = "native"
    summary = "per-model rewrites with the compiled custom ops (pyagingrt._C), fp16/bf16 and CUDA graphs on a GPU"
    load_options = ("buckets",)
    bf16_fallback = True

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        require_native()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        if "buckets" in options:
            try:
                options["buckets"] = check_buckets(options["buckets"])
            except (TypeError, ValueError) as exc:
                raise InputError(str(exc)) from None
        return options

    def __init__(
        self,
        adapter,
        config,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        *,
        config_name: str | None = None,
        source: dict[str, Any] | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        use_graphs: bool | None = None,
    ) -> None:
        require_native()  # before anything is built: no runner may reach the oracles under this backend's name
        # The fp32 module stays the master copy (save(), folding); the runner holds the converted weights.
        super().__init__(adapter, config, module, device, torch.float32, config_name=config_name, source=source)
        self.dtype = dtype
        if device.type == "cuda":
            # cuDNN autotuning happens while the engine is built (warm-up and graph capture run every shape once).
            torch.backends.cudnn.benchmark = True
        self.runner = runner_class(adapter.name)(adapter, self.module, config, device, dtype)
        graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self.graphs = GraphCache(device, buckets) if graphs else None
        self._check_finite()
        if self.graphs is not None:
            self.warmup((1,))

    @property
    def runner_name(self) -> str:
        return type(self.runner).__name__

    def describe(self) -> dict[str, Any]:
        info = build_info() or {}
        graphs = None if self.graphs is None else {"buckets": list(self.graphs.buckets), "captured": len(self.graphs)}
        return {
            **super().describe(),
            "runner": self.runner_name,
            "cuda_graphs": graphs,
            "extension": {k: info.get(k) for k in ("version", "with_cuda", "torch_version") if k in info},
        }

    def _check_finite(self) -> None:
        """Build-time check that the converted engine does not overflow on a random batch."""
        if self.dtype == torch.float32:
            return
        pixels, targets, gen, options = self._sample_batch(1)
        out = self._run_eager(pixels, targets, gen, options)
        if bool(torch.isfinite(out).all()):
            return
        raise NumericalError(
            f"the {self.precision} native {self.model} engine overflows (NaN/Inf){self._locate_overflow(pixels)}; "
            "use precision='fp32' (or 'bf16')"
        )

    def _locate_overflow(self, pixels: Tensor) -> str:
        """Where the overflow starts: runners hold folded weights, not layers, so run the training/ module
        in the engine's precision with a hook on every layer and name the first one whose output is not finite."""
        import copy

        probe = copy.deepcopy(self.module).to(self.dtype)
        _, targets, gen, options = self._sample_batch(1)
        with torch.no_grad():
            layer = first_nonfinite_layer(
                probe,
                lambda: self.adapter.run(probe, pixels.to(self.device), targets.to(self.device), gen, options),
            )
        if layer is None:
            return f" (the torch model in {self.precision} stays finite: the native rewrite itself overflows)"
        return f", first at layer {layer!r} of the model in {self.precision}"

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        """Capture (GPU) or run once (CPU) the given batch sizes with default options."""
        for batch in batch_sizes:
            pixels, targets, gen, options = self._sample_batch(batch)
            self._run(pixels, targets, gen, options)

    # Targets reach prepare() on the host: runners check them there and move them to the device themselves,
    # so a call never waits on the GPU for that check.
    def _run_eager(self, pixels, targets, generator, options) -> Tensor:
        with torch.no_grad():
            inputs = self.runner.prepare(pixels.to(self.device), targets, generator, options)
            return self.runner.forward(inputs, options)

    def _run(self, pixels: Tensor, targets: Tensor, generator: torch.Generator, options: dict[str, Any]) -> Tensor:
        if self.graphs is None or not self.runner.graph_safe(options):
            return self._run_eager(pixels, targets, generator, options)
        with torch.no_grad():
            inputs = self.runner.prepare(pixels.to(self.device), targets, generator, options)
            graph = self.runner.graph(options, inputs)  # the model's inference graph (an nn.Module) for these options
            names = graph.input_names
            return self.graphs.run(
                lambda static: graph(*(static[name] for name in names)),
                {name: inputs[name] for name in names},
                self.runner.graph_key(options),
            )
