"""Running the requests of one Triton batch through an engine, with one error per bad request.

Triton's dynamic batcher hands the server a list of requests. Each request is validated alone; the valid
ones are split into items (one crop each), grouped by model options, and each group runs as one
``Engine.age`` call with one target age per crop (a deterministic model), or one call per crop with that
crop's seed (a stochastic model: a crop's noise must not depend on its place in the batch). A call that fails
is retried crop by crop, so the error lands on the request it belongs to and the others are answered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import AgingError, InputError
from ..pipeline.faces import is_stochastic

__all__ = ["Item", "age_items", "parse_options", "parse_seed", "parse_target_ages", "seed_dependent"]

log = logging.getLogger("pyagingrt.serve")


@dataclass
class Item:
    """One crop to age: float [3, S, S] in [0, 1], its target age, seed and options; the request it belongs to."""

    request: int
    crop: torch.Tensor
    age: float
    seed: int
    options_key: str  # canonical JSON of the options: items with equal keys can share a call
    options: dict[str, Any] = field(default_factory=dict)
    result: torch.Tensor | None = None  # float [3, S, S] (or [K, 3, S, S]) once aged


def _one_column(value: np.ndarray, name: str, count: int) -> np.ndarray:
    """A request's [n, 1] (or [n]) input as n values; InputError when it holds another count."""
    flat = np.asarray(value).reshape(-1) if np.asarray(value).ndim <= 2 else None
    if flat is None or flat.size != count:
        shape = list(np.asarray(value).shape)
        raise InputError(f"input {name!r} must hold one value per image ({count}), got shape {shape}")
    return flat


def parse_target_ages(engine: Any, value: np.ndarray | None, count: int) -> np.ndarray:
    """Target ages in years, float64 [count], checked against the model's range (InputError names it)."""
    if value is None:
        raise InputError("input 'target_age' is missing: give the target age in years")
    ages = _one_column(value, "target_age", count).astype(np.float64)
    if not np.isfinite(ages).all():
        raise InputError(f"target_age must be finite, got {ages.tolist()}")
    engine.adapter.validate_ages(engine.config, torch.from_numpy(ages))  # raises with the model's range
    return ages


def parse_seed(value: np.ndarray | None, count: int) -> np.ndarray:
    """Seeds int64 [count]; 0 when the request gives none (the same request, the same answer)."""
    if value is None:
        return np.zeros(count, dtype=np.int64)
    seeds = _one_column(value, "seed", count)
    if not np.issubdtype(seeds.dtype, np.integer):
        raise InputError(f"seed must be an integer, got dtype {seeds.dtype}")
    if (seeds < 0).any():
        raise InputError(f"seed must be 0 or more, got {seeds.tolist()}")
    return seeds.astype(np.int64)


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"input {name!r} must be UTF-8 text") from None
    return str(value)


def parse_options(engine: Any, value: np.ndarray | None, count: int) -> tuple[dict[str, Any], str]:
    """Model options from the optional ``options`` input (a JSON object, e.g. {"sigma_m": 9}): the options
    checked by the model, and a canonical key. All images of one request share them."""
    if value is None:
        return {}, "{}"
    texts = {_text(v, "options").strip() for v in _one_column(value, "options", count)}
    if len(texts) != 1:
        raise InputError("all images of one request must have the same options; send separate requests")
    text = texts.pop() or "{}"
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f'options must be a JSON object, e.g. {{"sigma_m": 9}}: {exc}') from None
    if not isinstance(options, dict):
        raise InputError(f'options must be a JSON object, e.g. {{"sigma_m": 9}}, got {text!r}')
    engine.adapter.validate_options(engine.config, count, dict(options))  # unknown names, bad values
    return options, json.dumps(options, sort_keys=True)


def seed_dependent(engine: Any, options: dict[str, Any]) -> bool:
    """Whether a crop's result depends on its seed: a stochastic model, or CUSP's decoder noise="random" (whose
    per-image noise seeds are otherwise drawn in batch order)."""
    return is_stochastic(engine) or options.get("noise") == "random"


def _age_group(engine: Any, items: Sequence[Item]) -> None:
    crops = torch.stack([it.crop for it in items])
    ages = [it.age for it in items]
    if seed_dependent(engine, items[0].options):
        outs = [engine.age(crops[i : i + 1], ages[i], seed=it.seed, **it.options)[0] for i, it in enumerate(items)]
    else:
        outs = list(engine.age(crops, ages, seed=items[0].seed, **items[0].options))
    for it, out in zip(items, outs, strict=True):
        it.result = out


def age_items(engine: Any, items: Sequence[Item], errors: dict[int, Exception]) -> None:
    """Age every item whose request has no error yet; set ``item.result``, or ``errors[item.request]``."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        if it.request not in errors:
            groups.setdefault(it.options_key, []).append(it)
    for group in groups.values():
        try:
            _age_group(engine, group)
        except Exception:  # noqa: BLE001 (any failure: isolate the culprit, crop by crop)
            for it in group:
                if it.request in errors:
                    continue
                try:
                    _age_group(engine, [it])
                except AgingError as exc:
                    errors[it.request] = exc
                except Exception as exc:  # a bug or a device error: logged, answered, the server goes on
                    log.exception("request failed in the model")
                    errors[it.request] = RuntimeError(f"internal error in the model: {type(exc).__name__}: {exc}")
