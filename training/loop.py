"""The training loop shared by every model: processes, devices, precision, data order, checkpoints, logging.

``train(model, data, preset=..., out=...)`` is what ``agingrt train`` calls, once per process. Under
``torchrun`` (``WORLD_SIZE`` > 1) each process joins the default process group (NCCL on GPUs, gloo on CPU;
multi-node through torchrun's rendezvous) and takes ``batch_size / world_size`` items of every global batch;
gradients are averaged by :meth:`TrainContext.optimize`. Rank 0 alone writes files and shows the bar.

Data order is a pure function of (seed, epoch, step): step s reads the s-th slice of the epoch's seeded
permutation, so a resumed run continues with exactly the batches the uninterrupted run would have seen. With
the RNG states, optimisers and modules restored, a resumed run on CPU matches the straight run bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import checkpointing as ckpt
from .config import apply_overrides, base_config
from .errors import ConfigError, DivergedError, TrainingError
from .recipe import Recipe, TrainContext, get_recipe
from .validation import Validation


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run left: the last step done, the weights file written (rank 0's view), the
    resolved config and the recipe object (its modules hold the trained weights on this rank)."""

    run_dir: Path
    step: int
    weights: Path
    config: dict[str, Any]
    recipe: Recipe


# --- config -------------------------------------------------------------------------------------------------
def resolve_config(
    model: str, preset: str = "tiny", stage: str | None = None, overrides: Sequence[str] = ()
) -> tuple[type[Recipe], str, dict[str, Any]]:
    """(recipe class, stage, resolved config) for ``model`` / ``preset`` / ``stage`` and ``--set`` overrides."""
    try:
        recipe_cls = get_recipe(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    stage = stage or recipe_cls.stages[0]
    if stage not in recipe_cls.stages:
        raise ConfigError(f"{recipe_cls.name} has no stage {stage!r}; stages: {', '.join(recipe_cls.stages)}")
    if preset not in recipe_cls.presets:
        raise ConfigError(f"{recipe_cls.name} has no config {preset!r}; choose one of: {', '.join(recipe_cls.presets)}")
    cfg = base_config(recipe_cls.default_config(preset, stage))
    return recipe_cls, stage, apply_overrides(cfg, overrides)


# --- data ---------------------------------------------------------------------------------------------------
def open_training_data(source: str | Dataset, cfg: dict[str, Any], image_size: int) -> Dataset:
    """``synthetic[:N]``, a data set path (through ``training.data.dataset.open_dataset``), or a Dataset."""
    if isinstance(source, Dataset):
        return source
    from .data.synthetic import SyntheticFaces, parse_synthetic

    data = cfg["data"]
    try:
        count = parse_synthetic(str(source))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if count is not None:
        return SyntheticFaces(
            count, image_size=image_size, min_age=data["min_age"], max_age=data["max_age"], seed=cfg["loop"]["seed"]
        )
    try:
        from .data.dataset import open_dataset
    except ImportError:
        raise ConfigError(
            f"--data {source!r}: this build reads only the synthetic data set (--data synthetic[:N]); "
            "real data sets need training/data/dataset.py"
        ) from None
    return open_dataset(
        str(source),
        image_size=image_size,
        kind=data["kind"],
        labels=data["labels"],
        min_age=data["min_age"],
        max_age=data["max_age"],
    )


class StepBatchSampler(Sampler[list[int]]):
    """This rank's index batches for steps ``start`` .. ``stop - 1``: step s of epoch e = s // steps_per_epoch
    takes slice (s % steps_per_epoch) of randperm(N) seeded by (seed, e); drop-last; rank r takes its share."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, start: int, stop: int) -> None:
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.start, self.stop = seed, start, stop
        self.steps_per_epoch = size // global_batch
        self.local = global_batch // world

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, None
        for step in range(self.start, self.stop):
            e, offset = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + e))
            first = offset * self.global_batch + self.rank * self.local
            yield perm[first : first + self.local].tolist()


# --- processes and precision --------------------------------------------------------------------------------
def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA device; use --device cpu")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None (fp32) or the autocast dtype for ``loop.precision`` on ``device``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"loop.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ConfigError(f"loop.precision={precision} needs a GPU; training on CPU runs in fp32")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def rng_state(ctx: TrainContext) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": ctx.generator.get_state(), "python": random.getstate()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def set_rng_state(ctx: TrainContext, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    ctx.generator.set_state(state["generator"])
    random.setstate(state["python"])
    if ctx.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], ctx.device)


# --- logging ------------------------------------------------------------------------------------------------
class MetricsLog:
    """Scalars to ``metrics.csv`` (step, name, value; always) and TensorBoard (``tb/``; when installed)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        self.csv_file = None
        if not enabled:
            return
        path = run_dir / "metrics.csv"
        new = not path.exists()
        self.csv_file = path.open("a", newline="")
        self.csv = csv.writer(self.csv_file)
        if new:
            self.csv.writerow(["step", "name", "value"])
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the [train] extra; the CSV carries the same numbers
            return
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.csv.writerow([step, name, f"{value:.7g}"])
            if self.writer is not None:
                self.writer.add_scalar(name, value, step)
        self.csv_file.flush()

    def close(self) -> None:
        if self.csv_file is not None:
            self.csv_file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` as {name: [(step, value), ...]} (for tests and plots)."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return out


def write_sample_grid(path: Path, images: Tensor, outputs: Tensor, targets: Sequence[float]) -> None:
    """A PNG with one row per input: the input, then its output at each target age (left to right, as in
    ``targets``, which the PNG's ``targets`` text field also lists). images [B, 3, S, S], outputs [B, T, 3, S, S]."""
    from PIL import Image, PngImagePlugin

    rows = torch.cat([images[:, None].cpu().float(), outputs.cpu().float()], dim=1)  # [B, 1 + T, 3, S, S]
    b, t, _, s, _ = rows.shape
    grid = rows.permute(0, 3, 1, 4, 2).reshape(b * s, t * s, 3)  # [B*S, (1+T)*S, 3]
    pixels = (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("targets", json.dumps([float(a) for a in targets]))
    ckpt.atomic_write_bytes(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info))


# --- the loop -----------------------------------------------------------------------------------------------
def _check_finite(step: int, losses: dict[str, Tensor]) -> dict[str, float]:
    values = {k: float(v) for k, v in losses.items()}
    for name, value in values.items():
        if not math.isfinite(value):
            raise DivergedError(
                f"loss {name!r} is {value} at step {step}; training stopped (the last checkpoint is intact). "
                "Lower the learning rate, use loop.precision=fp32, or check the data"
            )
    return values


def _save(run_dir: Path, recipe: Recipe, ctx: TrainContext, step: int, cfg: dict[str, Any], final: bool) -> Path | None:
    """A checkpoint after ``step`` iterations (every rank calls it; rank 0 writes)."""
    rngs: list[Any] = [rng_state(ctx)]
    if ctx.distributed:
        rngs = [None] * ctx.world_size
        dist.all_gather_object(rngs, rng_state(ctx))
    if ctx.rank != 0:
        return None
    state = {
        "step": step,
        "model": recipe.name,
        "stage": recipe.stage,
        "modules": {k: m.state_dict() for k, m in recipe.modules().items()},
        "optimizers": {k: o.state_dict() for k, o in recipe.optimizers().items()},
        "schedulers": {k: s.state_dict() for k, s in recipe.schedulers().items()},
        "scalers": {k: s.state_dict() for k, s in ctx.scalers.items()},
        "extra": recipe.extra_state(),
        "rng": rngs,
    }
    source = {"trained_by": "agingrt train", "stage": recipe.stage, "step": step, "run": run_dir.name}
    stem = "final" if final else f"step-{step:08d}"
    folder = run_dir / "checkpoints"
    state_path = folder / f"{stem}.state.pt"
    weights = ckpt.save_inference(folder / f"{stem}.safetensors", recipe.inference_checkpoint(), source)
    ckpt.save_state(state_path, state)
    ckpt.write_latest(run_dir, step, weights, state_path)
    if final:
        ckpt.save_inference(run_dir / "final.safetensors", recipe.inference_checkpoint(), source)
        weights = run_dir / "final.safetensors"
    ckpt.prune_periodic(run_dir, cfg["loop"]["keep_checkpoints"])
    return weights


def _restore(recipe: Recipe, ctx: TrainContext, state: dict[str, Any]) -> int:
    if state.get("model") != recipe.name or state.get("stage") != recipe.stage:
        raise TrainingError(
            f"the run folder holds a {state.get('model')} / {state.get('stage')} run, "
            f"not {recipe.name} / {recipe.stage}"
        )
    for name, module in recipe.modules().items():
        module.load_state_dict(state["modules"][name])
    for name, opt in recipe.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    for name, sched in recipe.schedulers().items():
        sched.load_state_dict(state["schedulers"][name])
    for name, scaler_state in state["scalers"].items():
        ctx._scaler(name)
        if name in ctx.scalers:
            ctx.scalers[name].load_state_dict(scaler_state)
    recipe.load_extra_state(state["extra"])
    rngs = state["rng"]
    if len(rngs) == ctx.world_size:
        set_rng_state(ctx, rngs[ctx.rank])
    else:  # another world size: data order is unchanged, the per-rank draws restart from the seed
        ctx.generator.manual_seed(int(state["step"]) * 1_000_003 + ctx.rank)
    return int(state["step"])


def train(
    model: str,
    data: str | Dataset | None,
    *,
    out: str | os.PathLike[str],
    preset: str = "tiny",
    stage: str | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    device: str | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` into the run folder ``out`` (see the module docstring).

    Args:
        model: a recipe name (``acgan``, ``cusp``, ...).
        data: ``synthetic[:N]``, a data set path, or a Dataset of the data sets' item dicts; None on resume
            reads the saved source.
        out: the run folder; it must be empty or absent unless ``resume``.
        preset: ``paper`` or ``tiny``: the recipe's defaults.
        stage: the recipe's stage (default its first).
        overrides: ``section.key=value`` strings, applied last (on resume: over the saved config).
        resume: continue from ``out/latest.json`` (the saved config is used; ``overrides`` may change it).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default the local GPU under torchrun, else CUDA when present.
        stop_after: stop (with a checkpoint) once this many steps are done, without changing the planned
            length (schedules keep their course); for jobs with a time limit, and the resume test.
    """
    run_dir = Path(out)
    latest = ckpt.read_latest(run_dir) if resume else None
    if resume:
        if latest is None:
            raise TrainingError(f"--resume: {run_dir} holds no checkpoint (no {ckpt.LATEST})")
        saved = json.loads((run_dir / "config.json").read_text())
        model, preset, stage = saved["model"], saved["preset"], saved["stage"]
        if data is None:
            if saved.get("data") is None:
                raise TrainingError(f"{run_dir} was trained on an in-memory data set; pass the data again")
            data = saved["data"]
        recipe_cls, stage, _ = resolve_config(model, preset, stage)
        cfg = apply_overrides(saved["config"], overrides)
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TrainingError(f"{run_dir} is not empty; pass --resume to continue that run, or another --out")
        if data is None:
            raise ConfigError("no data set given (--data)")
        recipe_cls, stage, cfg = resolve_config(model, preset, stage, overrides)

    loop = cfg["loop"]
    rank, world, dev = init_distributed(device)
    if loop["batch_size"] % world:
        raise ConfigError(f"loop.batch_size={loop['batch_size']} does not split over {world} processes")
    torch.manual_seed(loop["seed"])
    random.seed(loop["seed"])
    dataset = open_training_data(data, cfg, recipe_cls.image_size(cfg))
    summary_of = dataset  # the per-group table covers the whole data set
    validation = None
    if loop["eval_every"]:
        dataset, held_out = split_validation(dataset, int(loop["eval_count"]))
        validation = Validation(held_out, dev) if rank == 0 else None
    steps_per_epoch = len(dataset) // loop["batch_size"]
    if steps_per_epoch < 1:
        raise TrainingError(f"the data set has {len(dataset)} items, fewer than one batch of {loop['batch_size']}")
    total = int(loop["steps"]) if loop["steps"] is not None else int(loop["epochs"]) * steps_per_epoch
    amp = autocast_dtype(loop["precision"], dev)
    if amp == torch.float16 and not recipe_cls.fp16_ok:
        if loop["precision"] == "fp16":
            raise ConfigError(f"{recipe_cls.name} does not train in fp16; use loop.precision=bf16 or fp32")
        amp = None  # auto on a GPU without bf16
        if rank == 0:
            print(f"{recipe_cls.name}: this GPU has no bf16 and fp16 does not train this model; training in fp32")
    ctx = TrainContext(
        device=dev,
        rank=rank,
        world_size=world,
        autocast_dtype=amp,
        channels_last=bool(loop["channels_last"]) and dev.type == "cuda",
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        generator=torch.Generator().manual_seed(loop["seed"] * 1_000_003 + rank),
    )
    recipe = recipe_cls(cfg, ctx, stage)
    start = _restore(recipe, ctx, ckpt.load_state(latest["state"])) if latest is not None else 0
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(
            run_dir / "config.json",
            {
                "model": recipe.name,
                "preset": preset,
                "stage": stage,
                "data": None if isinstance(data, Dataset) else str(data),
                "config": cfg,
                "world_size": world,
            },
        )
        summary = _group_summary(recipe, summary_of)
        if summary:
            print(summary, flush=True)
    stop = max(min(total, stop_after), start) if stop_after is not None else total
    sample_images = torch.stack([dataset[i]["image"] for i in range(min(loop["sample_count"], len(dataset)))])
    batches = recipe.prepare_data(dataset)
    sampler = StepBatchSampler(len(batches), loop["batch_size"], rank, world, loop["seed"], start, stop)
    loader = DataLoader(
        batches,
        batch_sampler=sampler,
        num_workers=loop["num_workers"],
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(loop["seed"]),  # keeps the global RNG untouched (exact resume)
    )
    log = MetricsLog(run_dir, enabled=rank == 0)
    bar = None
    if rank == 0 and loop["progress"]:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=f"train {recipe.name}/{stage}", unit="step", dynamic_ncols=True)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    count, tick, weights, step = 0, time.perf_counter(), None, start
    recipe.train()
    try:
        for step, batch in enumerate(loader, start=start):
            values = _check_finite(step, recipe.train_step(batch, step))
            for k, v in values.items():  # some losses run only on some steps (a G step every 2nd iteration)
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            count += 1
            done = step + 1
            if done % loop["log_every"] == 0 or done == stop:
                elapsed = max(time.perf_counter() - tick, 1e-9)
                scalars = {f"loss/{k}": v / counts[k] for k, v in sums.items()}
                scalars["perf/img_per_s"] = count * loop["batch_size"] / elapsed
                log.log(done, scalars)
                if bar is not None:
                    shown = {k.split("/", 1)[1]: f"{v:.3g}" for k, v in scalars.items() if k.startswith("loss/")}
                    bar.set_postfix({**shown, "img/s": f"{scalars['perf/img_per_s']:.1f}"}, refresh=False)
                sums, counts, count, tick = {}, {}, 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if loop["sample_every"] and done % loop["sample_every"] == 0 and rank == 0:
                _write_samples(run_dir / "samples" / f"step-{done:08d}.png", recipe, sample_images)
            if validation is not None and (done % loop["eval_every"] == 0 or done == total):
                log.log(done, validation.run(recipe, run_dir, done))
            if loop["checkpoint_every"] and done % loop["checkpoint_every"] == 0 and done < total:
                _save(run_dir, recipe, ctx, done, cfg, final=False)
        step = stop
        if stop == total:
            if rank == 0 and loop["sample_every"]:
                _write_samples(run_dir / "samples" / "final.png", recipe, sample_images)
            weights = _save(run_dir, recipe, ctx, total, cfg, final=True)
        elif not (loop["checkpoint_every"] and stop % loop["checkpoint_every"] == 0):
            weights = _save(run_dir, recipe, ctx, stop, cfg, final=False)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    if weights is None:
        record = ckpt.read_latest(run_dir) if rank == 0 else None
        weights = record["weights"] if record else run_dir / "final.safetensors"
    return TrainResult(run_dir=run_dir, step=step, weights=Path(weights), config=cfg, recipe=recipe)


def split_validation(dataset: Dataset, count: int) -> tuple[Dataset, Dataset]:
    """(training part, the last ``count`` items): a fixed split, so a resumed run holds out the same faces."""
    n = len(dataset)
    if count < 1 or count > n // 2:
        raise ConfigError(f"loop.eval_count={count} must lie in 1..{n // 2} (half of the {n} items)")
    return Subset(dataset, range(n - count)), Subset(dataset, range(n - count, n))


def _group_summary(recipe: Recipe, dataset: Dataset) -> str | None:
    """The data sets' per-group table (images, share, mean age) over the recipe's age groups, if available."""
    ages = getattr(dataset, "ages", None)
    if ages is None:
        return None
    try:
        from .data.dataset import describe_groups
    except ImportError:
        return None
    return describe_groups(ages, recipe.group_edges())


def _write_samples(path: Path, recipe: Recipe, images: Tensor) -> None:
    targets = recipe.sample_targets()
    recipe.train(False)
    try:
        outputs = recipe.sample(images, targets)
    finally:
        recipe.train(True)
    write_sample_grid(path, images, outputs, targets)
