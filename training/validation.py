"""``agingrt eval`` on a held-out split during training (``loop.eval_every``, ``loop.eval_count``).

Every ``eval_every`` steps rank 0 writes the current inference weights, loads them through ``pyagingrt.load``
(the path every user takes) and runs :func:`pyagingrt.evaluation.evaluate` on the held-out faces: apparent age of
the aged outputs against each target, identity kept, faces still found. The report goes to
``RUN_DIR/eval/step-NNNNNNNN.json`` and its means to the metrics log (``eval/...``). The judges come with
``pip install "pyagingrt[eval]"``; without them the run is refused before it starts, never silently unjudged.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from . import checkpointing as ckpt
from .errors import ConfigError
from .recipe import Recipe


class Validation:
    """The held-out split and the judges, checked once at the start of the run."""

    def __init__(self, held_out: Dataset, device: torch.device) -> None:
        from pyagingrt.errors import AgingError
        from pyagingrt.judges import get_judge

        try:
            self.judge = get_judge(identity=True)
        except (AgingError, ImportError) as exc:  # the [eval] extra is missing or incomplete
            raise ConfigError(f"loop.eval_every needs the judges of agingrt eval: {exc}") from None
        self.held_out = held_out
        self.device = device

    def run(self, recipe: Recipe, run_dir: Path, step: int) -> dict[str, float]:
        """Judge the weights after ``step`` steps; returns the scalars to log (targets' means, where judged)."""
        import pyagingrt
        from pyagingrt.evaluation import evaluate

        folder = run_dir / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / f"step-{step:08d}.safetensors"
        source = {"trained_by": "agingrt train", "stage": recipe.stage, "step": step, "run": run_dir.name}
        ckpt.save_inference(weights, recipe.inference_checkpoint(), source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)  # e.g. PADA's CLIP: not judged
                engine = pyagingrt.load(weights, device=str(self.device))
            report = evaluate(engine, self.held_out, judge=self.judge)
        finally:
            weights.unlink(missing_ok=True)  # the run's own checkpoints keep the weights
        report.save_json(folder / f"step-{step:08d}.json")
        return mean_scalars(report.to_dict()["targets"])


def mean_scalars(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over the targets of the figures the judges produced (a figure no target has is left out)."""
    scalars = {}
    for key in ("age_mae", "age_error", "identity_cosine", "detection_share"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            scalars[f"eval/{key}"] = sum(values) / len(values)
    return scalars
