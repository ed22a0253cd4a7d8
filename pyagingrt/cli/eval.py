"""``agingrt eval CHECKPOINT --data DIR``: how well a model ages faces, judged by independent networks."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .age import add_model_file_arguments, load_saying_warnings, model_files, parse_ages


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="judge a model's aged faces: apparent age vs target, identity kept, faces still detected",
        description="Align the largest face of every photo in DIR to the model's crop, age it to each target "
        "(default: one per age group), and judge inputs and outputs: apparent age (age-v1.onnx), identity "
        "(dlib's face descriptor: cosine, distance, share under 0.6) and whether a face is still found. "
        "Prints a table and writes OUT/eval.json and OUT/eval.png. Needs the [eval] extra: pip install "
        "'pyagingrt[eval]'. Example: agingrt eval run/final.safetensors --data photos/ --out run/eval; to try "
        "it without weights: agingrt eval --random-weights --model acgan --config tiny --data photos/",
    )
    p.add_argument("checkpoint", nargs="?", type=Path, metavar="CHECKPOINT", help="the weights to judge")
    p.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="folder of photos (or aligned crops) with faces"
    )
    p.add_argument("--model", help="ageflow, acgan, cusp or pada (default: read from a pyagingrt checkpoint)")
    p.add_argument("--config", help="model config, e.g. paper or tiny (default: the checkpoint's, else paper)")
    p.add_argument("--random-weights", action="store_true", help="no checkpoint: random weights (to try the command)")
    p.add_argument("--ages", type=parse_ages, help="target ages, e.g. 20,40,60 (default: one per age group, at most 8)")
    p.add_argument("--out", type=Path, default=Path("eval"), help="folder for eval.json and eval.png (default: eval)")
    p.add_argument("--limit", type=int, help="judge at most this many photos (default: all)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="torch", choices=("torch", "native"), help="(default: torch)")
    add_model_file_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the model's random draws (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace):
    import pyagingrt

    from ..errors import InputError

    common = {"device": args.device, "backend": args.backend, "config": args.config, **model_files(args)}
    if args.random_weights:
        if args.checkpoint is not None:
            raise InputError("give a CHECKPOINT or --random-weights, not both")
        if args.model is None:
            raise InputError("--random-weights needs --model (and usually --config tiny)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
            return pyagingrt.load(args.model, **common)
    if args.checkpoint is None:
        raise InputError("give the CHECKPOINT to judge (or --random-weights --model M to try the command)")
    if not args.checkpoint.is_file():
        raise InputError(f"checkpoint {args.checkpoint} does not exist or is not a file")
    if args.model is None:  # warnings (e.g. PADA without --clip) on one line each, and the judging goes on
        return load_saying_warnings(args.checkpoint, **common)
    return load_saying_warnings(args.model, args.checkpoint, **common)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..errors import InputError, MediaError
    from ..evaluation import evaluate
    from ..judges import get_judge
    from ..pipeline.align import alignment_for
    from ..pipeline.crops import aligned_crop
    from ..pipeline.media import list_images, read_image

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be 1 or more, got {args.limit}")
    photos = list_images(args.data)
    if args.limit is not None:
        photos = photos[: args.limit]
    judge = get_judge(identity=True)  # fails now, before any work, when the [eval] extra is missing
    engine = _load(args)
    args.out.mkdir(parents=True, exist_ok=True)
    alignment, size = alignment_for(engine), engine.input_size
    crops, left_out = [], []
    for photo in tqdm(photos, unit="photo", desc="aligning", disable=args.quiet, dynamic_ncols=True):
        try:
            image, _ = read_image(photo)
        except MediaError as exc:
            left_out.append(f"{photo.name}: {exc}")
            continue
        crop = aligned_crop(image, alignment, size)
        if crop is None:
            left_out.append(f"{photo.name}: no face found")
        else:
            crops.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0)
    for line in left_out:
        print(f"agingrt: note: left out {line}", file=sys.stderr)
    if not crops:
        raise MediaError(f"no face found in any photo of {args.data}")
    report = evaluate(
        engine,
        torch.stack(crops),
        args.ages,
        seed=args.seed,
        judge=judge,
        progress=lambda total: tqdm(total=total, unit="call", desc="judging", disable=args.quiet, dynamic_ncols=True),
    )
    print(report.table())
    report.save_json(args.out / "eval.json")
    report.plot(args.out / "eval.png")
    print(f"-> {args.out / 'eval.json'}, {args.out / 'eval.png'}")
    return 0
