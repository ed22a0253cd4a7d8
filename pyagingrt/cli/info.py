"""``agingrt info [MODEL]``: the build, or one model's config, size, cost, input and age groups."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show the build, or one model's config, size and age groups",
        description="Without MODEL: the pyagingrt build and the models. With MODEL: its config, parameter count, "
        "GFLOP per image, input size, age groups and options (random weights; nothing is downloaded).",
    )
    p.add_argument("model", nargs="?", help="a model name (ageflow, acgan, cusp, pada) or a pyagingrt checkpoint")
    p.add_argument("--config", default=None, help="config name, e.g. paper or tiny (default: the model's first)")
    p.set_defaults(func=run)


def _model_config(model: str, config: str | None) -> tuple[Any, Any, str | None]:
    """(adapter, config, config name or None) of a model name (+ --config) or of a pyagingrt checkpoint's header;
    nothing is built: the figures come from the cost table or a meta-device count (pyagingrt.models.costs)."""
    from pyagingrt.checkpoint import read_header
    from pyagingrt.models.registry import get_adapter, model_names

    if model.strip().lower() not in model_names() and Path(model).is_file():
        header = read_header(model)
        if header is None:
            raise CheckpointError(f"{model} is not a pyagingrt checkpoint; give a model name, or convert it first")
        if config is not None:
            raise InputError("a pyagingrt checkpoint stores its config; leave --config out")
        adapter = get_adapter(header.model)
        cfg = adapter.config_from_dict(header.config)
        return adapter, cfg, adapter.config_name_of(cfg)
    adapter = get_adapter(model)
    name = config or adapter.config_names[0]
    if name not in adapter.config_names:
        raise InputError(f"{adapter.name} has no config {name!r}; choose one of: {', '.join(adapter.config_names)}")
    return adapter, adapter.make_config(name), name


def run(args: argparse.Namespace) -> int:
    import pyagingrt
    from pyagingrt.models.registry import get_adapter, model_names

    if args.model is None:
        info = pyagingrt.build_info()
        print(f"pyagingrt {pyagingrt.__version__}")
        if info is None:
            print("native extension: not built (pip install --no-build-isolation -e .)")
        else:
            print("native extension: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        for name in model_names():
            adapter = get_adapter(name)
            print(f"  {name:8s} {adapter.title}; configs: {', '.join(adapter.config_names)}")
        return 0
    from pyagingrt.api import config_info
    from pyagingrt.models.costs import model_cost

    adapter, cfg, name = _model_config(args.model, args.config)
    info = config_info(adapter, cfg, name, model_cost(adapter, cfg))  # one count at most, for a custom config
    print(f"model       {info['model']}")
    print(f"config      {info['config']}")
    print(f"parameters  {info['parameters']:,}")
    print(f"GFLOP/image {info['gflop_per_image']:.2f}")
    print(f"input       {info['input_size']}x{info['input_size']} aligned RGB crop")
    if behaviour := adapter.behaviour(cfg):  # e.g. CUSP's mask mode
        print(f"behaviour   {behaviour}")
    print("age groups  " + "\n            ".join(info["age_groups"]))
    if info["options"]:
        print("options     " + "\n            ".join(f"{k} = {d!r}: {h}" for k, (d, h) in info["options"].items()))
    return 0
