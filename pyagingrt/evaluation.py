"""How well an engine ages faces, judged by independent networks: ``evaluate(engine, images) -> EvalReport``.

For each target age (by default one per age group of the model), every input crop is aged and both the input
and the output are judged (pyagingrt/judges.py):

- apparent age of the outputs: its mean, its mean signed error to the target and its mean absolute error;
- identity preservation: cosine similarity and euclidean distance between the input's and the output's dlib
  descriptors, and the share of pairs dlib would call the same person (distance < 0.6);
- the share of outputs in which a face is still found.

Only inputs in which the judges find a face count (a crop the judges cannot read says nothing about the
model). ``agingrt eval`` wraps this for a folder of photos; a training loop calls it on a validation split:

    report = evaluate(engine, val_dataset, targets=[25, 45, 65])
    print(report.table()); report.save_json(run_dir / "eval.json"); report.plot(run_dir / "eval.png")

docs/data.md shows reports on real photos.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .judges import SAME_PERSON_DISTANCE, FaceReading, get_judge, identity_similarity
from .pipeline.faces import run_engine
from .pipeline.media import atomic_output

__all__ = ["EvalReport", "TargetResult", "default_targets", "evaluate"]

_MAX_TARGETS = 8  # a model with many groups (CUSP FFHQ-RR: one per year) is judged at this many ages


@dataclass
class TargetResult:
    """The judged outputs for one target age."""

    label: str  # the model's group holding the target, e.g. "41-50"
    target_age: float
    inputs: int  # inputs the judges could read
    detected: int  # outputs in which a face was found
    mean_age: float | None  # mean apparent age of the detected outputs
    age_error: float | None  # mean_age - target_age
    age_mae: float | None  # mean |apparent age - target age|
    identity_cosine: float | None  # mean cosine similarity of the descriptors, input vs output
    identity_distance: float | None  # mean euclidean distance of the descriptors
    same_person: float | None  # share of pairs with distance < 0.6

    @property
    def detection_share(self) -> float | None:
        """Outputs with a face found / judged inputs; None when no input could be judged."""
        return self.detected / self.inputs if self.inputs else None


@dataclass
class EvalReport:
    """The results of :func:`evaluate`, one :class:`TargetResult` per target age."""

    model: str
    inputs: int  # crops given
    judged_inputs: int  # crops in which the judges found a face
    input_mean_age: float | None  # mean apparent age of those inputs
    targets: list[TargetResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, target in zip(data["targets"], self.targets, strict=True):
            row["detection_share"] = target.detection_share
        data["same_person_distance"] = SAME_PERSON_DISTANCE
        return data

    def save_json(self, path: Path) -> None:
        with atomic_output(Path(path)) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        """A plain-text table, one row per target."""

        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

        head = f"{'group':>8} {'target':>6} {'faces':>9} {'app. age':>8} {'error':>6} {'MAE':>5}"
        lines = [head + f" {'cosine':>6} {'dist':>5} {'same%':>5}"]
        for t in self.targets:
            same = None if t.same_person is None else 100 * t.same_person
            lines.append(
                f"{t.label:>8} {t.target_age:>6g} {f'{t.detected}/{t.inputs}':>9} {num(t.mean_age, '.1f'):>8} "
                f"{num(t.age_error, '+.1f'):>6} {num(t.age_mae, '.1f'):>5} {num(t.identity_cosine, '.3f'):>6} "
                f"{num(t.identity_distance, '.3f'):>5} {num(same, '.0f'):>5}"
            )
        lines.append(
            f"inputs: {self.judged_inputs} of {self.inputs} judged, mean apparent age "
            f"{num(self.input_mean_age, '.1f')}; faces = outputs with a face found / judged inputs; same% = "
            f"identity distance < {SAME_PERSON_DISTANCE}"
        )
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """A bar plot (PNG): apparent age vs target, identity cosine and detection share per target."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{t.label}\n({t.target_age:g})" for t in self.targets]
        x = np.arange(len(self.targets))
        fig, axes = plt.subplots(1, 3, figsize=(4 + 1.4 * len(self.targets), 3.6), constrained_layout=True)
        ages = [np.nan if t.mean_age is None else t.mean_age for t in self.targets]
        axes[0].bar(x, ages, color="tab:blue", label="apparent age of outputs")
        axes[0].plot(x, [t.target_age for t in self.targets], "k_", markersize=22, mew=2, label="target")
        if self.input_mean_age is not None:
            axes[0].axhline(self.input_mean_age, color="tab:gray", ls="--", lw=1, label="inputs")
        axes[0].set_ylabel("years")
        axes[0].set_title("apparent age (age-v1)")
        axes[0].legend(fontsize=7)
        cosine = [np.nan if t.identity_cosine is None else t.identity_cosine for t in self.targets]
        axes[1].bar(x, cosine, color="tab:green")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("identity: cosine (dlib)")
        shares = [np.nan if t.detection_share is None else t.detection_share for t in self.targets]
        axes[2].bar(x, shares, color="tab:orange")
        axes[2].set_ylim(0, 1)
        axes[2].set_title("faces still detected")
        for ax in axes:
            ax.set_xticks(x, labels, fontsize=7)
        fig.suptitle(f"{self.model}: {self.judged_inputs} faces", fontsize=9)
        with atomic_output(Path(path)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)


def default_targets(engine: Any) -> list[float]:
    """One target age per age group of the engine (its representative age), at most 8 spread over them."""
    groups = list(engine.age_groups)
    if len(groups) > _MAX_TARGETS:
        picks = np.linspace(0, len(groups) - 1, _MAX_TARGETS).round().astype(int)
        groups = [groups[i] for i in sorted(set(picks.tolist()))]
    return [g.representative_age() for g in groups]


def _group_label(engine: Any, age: float) -> str:
    for group in getattr(engine, "age_groups", ()):
        if group.low <= math.floor(age + 0.5) <= group.high:
            return group.label
    return f"{age:g}"


def _as_uint8(images: Tensor) -> np.ndarray:
    """float [B, 3, S, S] in [0, 1] -> uint8 [B, S, S, 3]."""
    return images.detach().float().cpu().mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _batches(images: Any, size: int, batch_size: int) -> Any:
    """Float [B, 3, S, S] batches at the engine's size from a Tensor [N, 3, S', S'] or a Dataset of dicts."""
    count = len(images)
    for start in range(0, count, batch_size):
        if isinstance(images, Tensor):
            batch = images[start : start + batch_size]
        else:
            batch = torch.stack([images[i]["image"] for i in range(start, min(start + batch_size, count))])
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise InputError(f"evaluate needs RGB images [N, 3, S, S], got a batch of {tuple(batch.shape)}")
        if batch.shape[-1] != size or batch.shape[-2] != size:
            batch = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True)
        yield batch.float().clamp(0.0, 1.0)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate(
    engine: Any,
    images: Any,
    targets: Sequence[float] | None = None,
    *,
    batch_size: int = 16,
    seed: int = 0,
    judge: Any = None,
    progress: Callable[[int], Any] | None = None,
) -> EvalReport:
    """Age ``images`` to every target and judge the results.

    Args:
        engine: an ``Engine`` (or anything with ``input_size``, ``model``, ``device``, ``age_groups`` and
            ``age(crops, target_age, seed=)``).
        images: aligned crops: float Tensor[N, 3, S, S] in [0, 1], or a data set whose items hold "image" (a
            ``FaceAgeDataset`` or a ``Subset`` of one). Other sizes than the engine's are resized.
        targets: target ages in years; default :func:`default_targets`.
        batch_size: crops per engine call.
        seed: seed of the engine's random draws (stochastic models).
        judge: a :class:`pyagingrt.judges.FaceJudge` (default: the shared one, with identity).
        progress: called with the total number of engine calls; returns a tqdm-like bar (``update``, ``close``).
    """
    if len(images) == 0:
        raise InputError("evaluate needs at least one image")
    judge = judge or get_judge(identity=True)
    ages = [float(a) for a in (targets if targets is not None else default_targets(engine))]
    if not ages:
        raise InputError("evaluate needs at least one target age")
    size = int(engine.input_size)
    calls = math.ceil(len(images) / batch_size) * len(ages)
    bar = progress(calls) if progress is not None else None
    inputs_read: list[FaceReading | None] = []
    per_target: list[list[FaceReading | None]] = [[] for _ in ages]
    for batch in _batches(images, size, batch_size):
        inputs_read.extend(judge.read(image) for image in _as_uint8(batch))
        seeds = [seed + len(inputs_read) - len(batch) + i for i in range(len(batch))]
        for k, age in enumerate(ages):
            aged = run_engine(engine, batch.to(engine.device), age, seeds, {})
            if aged.dim() == 5:  # K samples per face: judge the first
                aged = aged[:, 0]
            per_target[k].extend(judge.read(image) for image in _as_uint8(aged))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    judged = [i for i, r in enumerate(inputs_read) if r is not None]
    report = EvalReport(
        model=str(getattr(engine, "model", "engine")),
        inputs=len(inputs_read),
        judged_inputs=len(judged),
        input_mean_age=_mean([inputs_read[i].age for i in judged]),
    )
    for age, outputs in zip(ages, per_target, strict=True):
        pairs = [(inputs_read[i], outputs[i]) for i in judged if outputs[i] is not None]
        found = [out.age for _, out in pairs]
        similarity = [
            identity_similarity(src.descriptor, out.descriptor)
            for src, out in pairs
            if src.descriptor is not None and out.descriptor is not None
        ]
        report.targets.append(
            TargetResult(
                label=_group_label(engine, age),
                target_age=age,
                inputs=len(judged),
                detected=len(pairs),
                mean_age=_mean(found),
                age_error=None if not found else float(np.mean(found)) - age,
                age_mae=_mean([abs(a - age) for a in found]),
                identity_cosine=_mean([c for c, _ in similarity]),
                identity_distance=_mean([d for _, d in similarity]),
                same_person=_mean([float(d < SAME_PERSON_DISTANCE) for _, d in similarity]),
            )
        )
    return report
