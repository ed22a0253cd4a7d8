"""``agingrt info [MODEL]``: the build, or one model's config, size, cost, input and age groups."""

from __future__ import annotations

import argparse
import warnings


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(args.model, config=args.config, device="cpu")
    info = engine.info()
    print(f"model       {info['model']}")
    print(f"config      {info['config']}")
    print(f"parameters  {info['parameters']:,}")
    print(f"GFLOP/image {info['gflop_per_image']:.2f}")
    print(f"input       {info['input_size']}x{info['input_size']} aligned RGB crop")
    if behaviour := engine.adapter.behaviour(engine.config):  # e.g. CUSP's mask mode
        print(f"behaviour   {behaviour}")
    print("age groups  " + "\n            ".join(info["age_groups"]))
    if info["options"]:
        print("options     " + "\n            ".join(f"{k} = {d!r}: {h}" for k, (d, h) in info["options"].items()))
    return 0
