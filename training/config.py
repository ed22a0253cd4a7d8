"""Training configs: the loop's generic defaults, a recipe's preset on top, the user's ``--set`` overrides last.

A config is a nested dict of JSON values with four sections: ``model`` (the model config), ``train`` (the
recipe's losses, optimisers, schedules), ``loop`` (this module's :data:`LOOP_DEFAULTS`) and ``data``
(:data:`DATA_DEFAULTS`). ``--set section.key=value`` replaces one leaf; the value is read as JSON when it
parses (``1e-4``, ``true``, ``null``, ``[0.5, 0.999]``) and as a plain string otherwise. Unknown keys are
refused with the list of known ones, so a typo never trains silently with the default.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError

# Generic loop knobs (a recipe's preset may override any of them).
LOOP_DEFAULTS: dict[str, Any] = {
    "batch_size": 8,  # global batch: split evenly over the processes
    "steps": None,  # iterations; None: epochs x steps per epoch
    "epochs": 1,
    "seed": 0,
    "precision": "auto",  # auto: bf16 on a GPU that has it (else fp16), fp32 on CPU; or fp32 | bf16 | fp16
    "channels_last": True,  # GPU only
    "num_workers": 2,
    "log_every": 10,  # steps between logged scalars
    "sample_every": 500,  # steps between sample grids (0: never)
    "sample_count": 4,  # inputs (rows) in a sample grid
    "checkpoint_every": 1000,  # steps between periodic checkpoints (0: only the final one)
    "keep_checkpoints": 3,  # periodic checkpoints kept (the final one is always kept)
    "progress": True,  # tqdm bar on rank 0
    "eval_every": 0,  # steps between `agingrt eval` runs on the held-out split (0: never; needs pyagingrt[eval])
    "eval_count": 32,  # items held out from the end of the data set when eval_every > 0 (never trained on)
}

DATA_DEFAULTS: dict[str, Any] = {
    "kind": "auto",  # data set kind for open_dataset (folder+csv, utkface, ffhq-aging, morph, cacd, ...)
    "labels": None,  # label CSV for a folder data set
    "min_age": 0,
    "max_age": 100,
}


def base_config(recipe_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Loop and data defaults, then the recipe's preset sections merged over them."""
    cfg: dict[str, Any] = {"model": {}, "train": {}, "loop": dict(LOOP_DEFAULTS), "data": dict(DATA_DEFAULTS)}
    for section, values in recipe_defaults.items():
        if section in ("loop", "data"):
            unknown = sorted(set(values) - set(cfg[section]))
            if unknown:
                raise ConfigError(f"recipe default sets unknown {section} keys: {', '.join(unknown)}")
            cfg[section].update(copy.deepcopy(dict(values)))
        else:
            cfg[section] = copy.deepcopy(dict(values))
    return cfg


def parse_value(text: str) -> Any:
    """JSON when it parses, else the string itself (so paths and names need no quotes)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value``) overrides to a copy of ``cfg``."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE (e.g. train.lr_g=2e-4), got {item!r}")
        path = key.strip().split(".")
        node: Any = out
        for depth, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(_unknown(".".join(path[: depth + 1]), node))
            node = node[part]
        leaf = path[-1]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(_unknown(key.strip(), node))
        node[leaf] = parse_value(raw)
    return out


def _unknown(key: str, node: Any) -> str:
    known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
    return f"unknown config key {key!r}; known here: {known}"
