"""Parameter count and FLOPs per image of a model config: from a table for the named configs, counted otherwise.

Counting needs the module built on the meta device and one forward through torch's FlopCounterMode. That
costs seconds even without weights: torch's first meta-device operation in a process imports its compiler
stack (~1.5 s), and the paper AgeFlow runs ~10,000 operations through the counter. ``agingrt info`` must
answer in well under 3 s, so the named configs' figures live in ``costs.json``, written by this module
(``python -m pyagingrt.models.costs``) and checked against a fresh count by the tests. Any other config (a
checkpoint's custom config, CUSP with ``mask="paper"``) is counted.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch

from .base import ModelAdapter

TABLE = Path(__file__).with_name("costs.json")


@dataclasses.dataclass(frozen=True)
class ModelCost:
    parameters: int
    flops_per_image: float  # 2 per multiply-add, one image, fp32


def count_cost(adapter: ModelAdapter, config: Any) -> ModelCost:
    """Build ``config`` on the meta device (no weights, no memory) and count its parameters and FLOPs."""
    from ..errors import RandomWeightsWarning

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", RandomWeightsWarning)  # e.g. PADA's random CLIP: no weights read here
        module = adapter.build(config).eval().requires_grad_(False)
    parameters = sum(p.numel() for p in module.parameters())
    return ModelCost(parameters, adapter.flops_per_image(module, config))


@cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text()) if TABLE.is_file() else {}


def tabulated_cost(adapter: ModelAdapter, config: Any) -> ModelCost | None:
    """The table's figures when ``config`` is exactly one of the named configs it records, else None."""
    as_dict = json.loads(json.dumps(adapter.config_to_dict(config)))  # tuples -> lists, as the table holds them
    for entry in _table().get("models", {}).get(adapter.name, {}).values():
        if entry["config"] == as_dict:
            return ModelCost(entry["parameters"], entry["flops_per_image"])
    return None


def model_cost(adapter: ModelAdapter, config: Any) -> ModelCost:
    """Parameters and FLOPs per image of ``config``: tabulated when it is a named config, counted otherwise."""
    return tabulated_cost(adapter, config) or count_cost(adapter, config)


def build_table() -> dict[str, Any]:
    """Count every named config of every model (what ``costs.json`` holds)."""
    from .registry import get_adapter, model_names

    models: dict[str, Any] = {}
    for name in model_names():
        adapter = get_adapter(name)
        models[name] = {}
        for config_name in adapter.config_names:
            config = adapter.make_config(config_name)
            cost = count_cost(adapter, config)
            models[name][config_name] = {
                "config": adapter.config_to_dict(config),
                "parameters": cost.parameters,
                "flops_per_image": cost.flops_per_image,
            }
    return {"counted_with_torch": torch.__version__.split("+")[0], "models": models}


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build_table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE}", file=sys.stderr)
