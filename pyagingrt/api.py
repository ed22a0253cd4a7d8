"""``pyagingrt.load`` and ``Engine``: one API over the four models and the backends.

eng = pyagingrt.load("cusp", checkpoint="network-snapshot.pkl", device="cuda", precision="fp16")
out = eng.age(images, target_age=70, sigma_m=9.0, sigma_g=0.0, seed=0)
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .backends.registry import AUTO, backend_class, backends_accepting
from .checkpoint import (
    CheckpointHeader,
    check_state_dict,
    load_checkpoint,
    load_state_dict_strict,
    read_header,
    save_checkpoint,
)
from .errors import (
    CheckpointError,
    InputError,
    NumericalError,
    PrecisionFallbackWarning,
    RandomWeightsWarning,
)
from .images import ImageInput, as_image_batch
from .models.base import AgeGroup, ModelAdapter
from .models.costs import ModelCost, model_cost
from .models.registry import get_adapter, model_names

__all__ = ["PRECISIONS", "Engine", "RandomWeightsWarning", "load"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for, but torch sees no CUDA device here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":  # fp16 on a GPU (see load() for the bf16 fallback), fp32 on CPU
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        choices = ", ".join((*PRECISIONS, "auto"))
        raise InputError(f"precision must be one of {choices}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision 'fp16' needs a CUDA device; on CPU use 'fp32' (or 'bf16')")
    return PRECISIONS[precision]


def _resolve_config(adapter: ModelAdapter, config: Any) -> tuple[Any, str | None]:
    if config is None:
        return adapter.make_config(adapter.config_names[0]), adapter.config_names[0]
    if isinstance(config, str):
        if config not in adapter.config_names:
            names = ", ".join(adapter.config_names)
            raise InputError(f"{adapter.name} has no config {config!r}; choose one of: {names}")
        return adapter.make_config(config), config
    if isinstance(config, dict):
        return adapter.config_from_dict(config), None
    return config, None


def _looks_like_path(model: str | os.PathLike[str]) -> bool:
    text = os.fspath(model)
    return os.sep in text or text.endswith(".safetensors") or Path(text).is_file()


def load(
    model: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    backend: str = "torch",
    device: str | torch.device | None = None,
    precision: str = "fp32",
    config: str | dict[str, Any] | Any | None = None,
    buckets: Sequence[int] | None = None,
    **load_options: Any,
) -> Engine:
    """Build an :class:`Engine` for one model.

    Args:
        model: a model name (see ``pyagingrt.models()``), or the path of a checkpoint written by
            :meth:`Engine.save` (then ``checkpoint`` must be None).
        checkpoint: weights: a pyagingrt ``.safetensors`` file, or an official checkpoint of the model
            (converted on load). None builds random weights and warns (:class:`RandomWeightsWarning`).
        backend: one of ``pyagingrt.backend_names()``: "torch" (the reference, CPU or GPU), "native" (the
            optimised engine; needs the compiled extension), "onnxruntime", "openvino" (CPU), or "auto": each
            available backend is timed on a short probe at load and the fastest kept (the pick is cached per
            model, config, batch, device and precision; ``engine.describe()`` says which).
        device: "cpu", "cuda" or "cuda:N"; default CUDA when available.
        precision: "fp32" (default), "fp16" (CUDA only), "bf16", or "auto": the backend's default (fp32 on CPU,
            fp16 on CUDA; OpenVINO bf16 where the CPU has it); for ``backend="native"`` bf16 instead when the fp16
            engine overflows at build and the GPU has bf16 (a :class:`PrecisionFallbackWarning` says so).
        config: a config name of the model (e.g. "paper", "tiny"), a config dict, or a config object; default
            the model's first config (its paper size), or the one stored in a pyagingrt checkpoint.
        buckets: ``backend="native"`` on CUDA only: the batch sizes that get a CUDA graph each (default 1, 4, 16,
            32). A call is padded into the smallest bucket that holds it; a batch above the largest runs in
            chunks of the largest.
        **load_options: model-specific extra weights, e.g. CUSP ``dex=PATH``, PADA ``clip=DIR``.

    Raises:
        UnknownModelError, InputError, CheckpointError, BackendUnavailableError (NativeExtensionError).
    """
    dev = _resolve_device(device)
    backend_options: dict[str, Any] = {} if buckets is None else {"buckets": buckets}
    if backend == AUTO:
        engine_cls: type[Engine] | None = None
        dtype = _resolve_precision(precision, dev)
        if backend_options:
            raise InputError("backend='auto' takes no backend options (buckets=); name the backend to pass them")
    else:  # every check that needs no weights fails here, before any are read
        engine_cls = backend_class(backend)
        engine_cls.check_available(dev)
        dtype = engine_cls.auto_precision(dev) if precision == "auto" else _resolve_precision(precision, dev)
        engine_cls.check_precision(dtype, dev)
        backend_options = engine_cls.check_options(backend_options)

    state: dict[str, Tensor] | None = None
    source: dict[str, Any] | None = None
    is_name = isinstance(model, str) and model.strip().lower() in model_names()
    if not is_name and _looks_like_path(model):
        if checkpoint is not None:
            raise InputError("give either a checkpoint path as the model, or a model name and checkpoint=, not both")
        checkpoint, header = model, read_header(model)
        if header is None:
            raise CheckpointError(f"{model} is not a pyagingrt checkpoint; pass the model name and checkpoint={model}")
        model = header.model
    adapter = get_adapter(str(model))
    cfg, config_name = _resolve_config(adapter, config)
    unknown = sorted(set(load_options) - {o.name for o in adapter.load_options})
    if unknown:  # fail before any weights are read
        allowed = ", ".join(o.name for o in adapter.load_options) or "none"
        raise InputError(f"load() for {adapter.name} does not take {', '.join(unknown)}; allowed: {allowed}")

    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
        if not ckpt_path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_path} does not exist or is not a file")
        header = read_header(ckpt_path)
        if header is not None:
            if header.model != adapter.name:
                raise CheckpointError(f"{ckpt_path} is a {header.model} checkpoint, not {adapter.name}")
            if config is not None:
                raise InputError("a pyagingrt checkpoint stores its config; do not pass config= with it")
            _, state = load_checkpoint(ckpt_path)
            cfg, config_name = adapter.config_from_dict(header.config), None
            source = header.source
        else:
            converted, state = adapter.convert_official(
                ckpt_path, config_name if config is not None else None, **load_options
            )
            requested = cfg if config is not None and not isinstance(config, str) else None
            cfg = _apply_requested_config(adapter, converted, requested, state, ckpt_path)
            config_name = adapter.config_name_of(cfg)  # a converted non-paper layout is not labelled paper
            source = {"converted_from": ckpt_path.name}
    cfg = adapter.configure(cfg, **load_options)
    module = adapter.build(cfg)
    if state is None:
        warnings.warn(
            f"{adapter.name}: no checkpoint given, using random weights: the output is meaningless "
            "(fine for benchmarks and tests)",
            RandomWeightsWarning,
            stacklevel=2,
        )
    else:
        load_state_dict_strict(module, state, str(checkpoint))
    adapter.attach(module, cfg, **load_options)
    module.eval().requires_grad_(False)
    if engine_cls is None:
        from .backends.auto import load_auto

        return load_auto(adapter, cfg, module, dev, precision, config_name=config_name, source=source)
    return build_engine(
        engine_cls,
        adapter,
        cfg,
        module,
        dev,
        dtype,
        precision,
        config_name=config_name,
        source=source,
        **backend_options,
    )


def build_engine(
    engine_cls: type[Engine],
    adapter: ModelAdapter,
    config: Any,
    module: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    precision: str,
    **kwargs: Any,
) -> Engine:
    """``engine_cls(...)``, through the bf16 fallback where the backend has one and precision is "auto"."""

    def build(dt: torch.dtype) -> Engine:
        return engine_cls(adapter, config, module, device, dt, **kwargs)

    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto" and engine_cls.bf16_fallback and dtype == torch.float16 and bf16_ok:
        return build_with_bf16_fallback(build, adapter.name)
    return build(dtype)


def _apply_requested_config(
    adapter: ModelAdapter, converted: Any, requested: Any, state: dict[str, Tensor], path: Path
) -> Any:
    """``config=`` (a dict or object) with an official checkpoint: applied when the weights fit it (a warning
    lists what it changes from the checkpoint's own config), else refused naming the fields."""
    if requested is None or requested == converted:
        return converted
    changes = ", ".join(
        f"{f.name} {getattr(converted, f.name)!r} -> {getattr(requested, f.name)!r}"
        for f in dataclasses.fields(converted)
        if getattr(converted, f.name) != getattr(requested, f.name, None)
    )
    try:
        with torch.device("meta"):
            reference = adapter.build(requested)  # shapes only
        check_state_dict(reference, state, str(path))
    except CheckpointError as exc:
        raise CheckpointError(f"config= does not fit {path} ({changes}): {exc}") from None
    warnings.warn(f"config= applied to {path}: {changes} (checkpoint -> config=)", UserWarning, stacklevel=3)
    return requested


def build_with_bf16_fallback(build: Callable[[torch.dtype], Engine], model: str) -> Engine:
    """``build(fp16)``, or ``build(bf16)`` with a warning when the fp16 engine overflows (NumericalError):
    bf16 has fp32's exponent range, so activations that exceed fp16's 65504 stay finite."""
    try:
        return build(torch.float16)
    except NumericalError as exc:
        warnings.warn(
            f"{model}: precision='auto' chose bf16 because the fp16 engine overflows ({exc})",
            PrecisionFallbackWarning,
            stacklevel=3,
        )
        return build(torch.bfloat16)


class Engine:
    """A loaded model on one device and precision. Build it with :func:`load`.

    This class is also the interface every backend implements (``pyagingrt/backends/registry.py``): a backend is
    a subclass that sets the class attributes below, builds itself in ``__init__`` and runs a batch in
    :meth:`_run`. Used directly, it runs the ``training/`` module (the torch backend).
    """

    backend: ClassVar[str] = "torch"
    #: one line for ``--help`` and ``agingrt bench``
    summary: ClassVar[str] = "the PyTorch modules of training/ in eval mode (the reference), CPU or CUDA"
    #: the backend's own keyword arguments of load() (besides the model's)
    load_options: ClassVar[tuple[str, ...]] = ()
    #: precision="auto" may rebuild in bf16 when the fp16 build overflows (NumericalError)
    bf16_fallback: ClassVar[bool] = False

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        """Raise BackendUnavailableError when this backend cannot run on ``device`` in this installation."""

    @classmethod
    def auto_precision(cls, device: torch.device) -> torch.dtype:
        """What precision="auto" means for this backend: fp16 on a GPU, fp32 on CPU."""
        return torch.float16 if device.type == "cuda" else torch.float32

    @classmethod
    def check_precision(cls, dtype: torch.dtype, device: torch.device) -> None:
        """Raise InputError for a precision this backend does not run on ``device``."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the backend's own load() options; InputError for one it does not take."""
        for name in options:
            if name not in cls.load_options:
                takers = " or ".join(f"backend={b!r}" for b in backends_accepting(name)) or "no backend"
                raise InputError(f"{name}= applies to {takers} only, not to backend={cls.backend!r}")
        return dict(options)

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
        self.adapter = adapter
        self.config = config
        self.config_name = config_name
        self.device = device
        self.dtype = dtype
        self.source = source
        self.module = module.to(device=device, dtype=dtype)
        self._flops: float | None = None
        self.auto_choice: dict[str, Any] | None = None  # set by backend="auto": what it measured and picked

    # --- description ---------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.adapter.name

    @property
    def input_size(self) -> int:
        """Side of the square aligned RGB crop the model takes."""
        return self.adapter.input_size(self.config)

    @property
    def age_groups(self) -> tuple[AgeGroup, ...]:
        return self.adapter.age_groups(self.config)

    @property
    def precision(self) -> str:
        return next(k for k, v in PRECISIONS.items() if v == self.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def flops_per_image(self) -> float:
        """FLOPs (2 per multiply-add) of one image in fp32: tabulated for a named config, otherwise counted once
        on the meta device (shapes only: no weights, no memory, no arithmetic) and cached."""
        if self._flops is None:
            self._flops = model_cost(self.adapter, self.config).flops_per_image
        return self._flops

    def describe(self) -> dict[str, Any]:
        """The backend and what it runs: model, config, device, precision, and the backend's own choices."""
        return {
            "backend": self.backend,
            "model": self.model,
            "config": self.config_name or "custom",
            "device": str(self.device),
            "precision": self.precision,
            **({"auto": self.auto_choice} if self.auto_choice is not None else {}),
        }

    def __repr__(self) -> str:
        return (
            f"Engine(model={self.model!r}, config={self.config_name or 'custom'!r}, backend={self.backend!r}, "
            f"device={str(self.device)!r}, precision={self.precision!r}, input_size={self.input_size})"
        )

    # --- running -------------------------------------------------------------------------------------------
    def _targets(self, target_age: float | Sequence[float] | Tensor, batch: int) -> Tensor:
        try:
            ages = torch.as_tensor(target_age, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"target_age must be a number or one number per image, got {target_age!r}") from exc
        if ages.numel() == 1:
            ages = ages.expand(batch).clone()
        if ages.numel() != batch:
            raise InputError(f"target_age has {ages.numel()} values for {batch} images; give one, or one per image")
        if not bool(torch.isfinite(ages).all()):
            raise InputError(f"target_age must be finite, got {ages.tolist()}")
        return self.adapter.validate_ages(self.config, ages)

    def _generator(self, seed: int | None, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            if seed is not None:
                raise InputError("give seed= or generator=, not both")
            return generator
        gen = torch.Generator()
        if seed is None:
            gen.seed()  # non-deterministic on purpose; pass seed= for repeatable output
        else:
            gen.manual_seed(int(seed))
        return gen

    def _sample_batch(self, batch: int) -> tuple[Tensor, Tensor, torch.Generator, dict[str, Any]]:
        """A seeded random batch with every age group as a target: what backends build, warm up and probe on."""
        size = self.input_size
        gen = torch.Generator().manual_seed(0)
        pixels = torch.rand(batch, 3, size, size, generator=gen)
        groups = self.age_groups
        ages = torch.tensor([groups[i % len(groups)].representative_age() for i in range(batch)], dtype=torch.float64)
        targets = self.adapter.validate_ages(self.config, ages)
        options = self.adapter.validate_options(self.config, batch, {})
        return pixels, targets, gen, options

    def _run(self, pixels: Tensor, targets: Tensor, generator: torch.Generator, options: dict[str, Any]) -> Tensor:
        """Run the adapter on a validated batch (float32 [B, 3, S, S] on any device)."""
        with torch.no_grad():
            return self.adapter.run(self.module, pixels.to(self.device), targets.to(self.device), generator, options)

    def age(
        self,
        images: ImageInput,
        target_age: float | Sequence[float] | Tensor,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Any:
        """Age aligned face crops.

        Args:
            images: float Tensor[B, 3, S, S] (or [3, S, S]) in [0, 1], a uint8 tensor, or uint8 RGB numpy arrays
                [H, W, 3] / [B, H, W, 3]; S = ``input_size``. Photos go through ``pyagingrt.pipeline`` first.
            target_age: years, one number or one per image; each model maps years to its groups (``age_groups``).
            seed: seed of every random draw (same seed, same output); None draws a fresh one.
            generator: a torch.Generator instead of ``seed``.
            **options: model options (``info()["options"]`` lists them).

        Returns:
            The aged crops in the input's kind: Tensor[B, 3, S, S] in [0, 1] on the input's device, or uint8 arrays.
            PADA with ``num_samples=K > 1`` adds a sample axis after the batch axis.
        """
        batch = as_image_batch(images, self.input_size)
        targets = self._targets(target_age, batch.pixels.shape[0])
        opts = self.adapter.validate_options(self.config, batch.pixels.shape[0], options)
        out = self._run(batch.pixels, targets, self._generator(seed, generator), opts).float()
        if not bool(torch.isfinite(out).all()):
            raise NumericalError(
                f"{self.model} produced NaN/Inf in {self.precision}; try precision='fp32' or check the checkpoint"
            )
        return batch.restore(out.clamp(0.0, 1.0))

    # --- saving --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The weights in float32 (whatever the engine's precision), keyed as the training/ module."""
        return {k: (v.float() if v.is_floating_point() else v) for k, v in self.module.state_dict().items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the engine's weights and config as a pyagingrt checkpoint (.safetensors), atomically."""
        header = CheckpointHeader(
            model=self.model,
            config=self.adapter.config_to_dict(self.config),
            age_groups=[g.to_dict() for g in self.age_groups],
            source=self.source,
        )
        return save_checkpoint(path, header, self.state_dict())

    def info(self) -> dict[str, Any]:
        """What ``agingrt info`` prints: model, config, parameters, GFLOP per image, input size, groups, options."""
        cost = ModelCost(self.num_parameters(), self.flops_per_image())
        return config_info(self.adapter, self.config, self.config_name, cost)


def config_info(adapter: ModelAdapter, config: Any, config_name: str | None, cost: ModelCost) -> dict[str, Any]:
    """Engine.info() of a model config and its cost, without building it (``agingrt info`` passes model_cost)."""
    groups = [
        f"{g.index}: {g.label} ({g.low:g}-{'' if math.isinf(g.high) else f'{g.high:g}'})"
        for g in adapter.age_groups(config)
    ]
    return {
        "model": f"{adapter.name} — {adapter.title}",
        "config": config_name or "custom",
        "parameters": cost.parameters,
        "gflop_per_image": cost.flops_per_image / 1e9,
        "input_size": adapter.input_size(config),
        "age_groups": groups,
        "options": {o.name: (o.default, o.help) for o in adapter.options},
    }
