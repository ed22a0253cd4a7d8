"""``agingrt age PHOTO...``: age the faces in photos, or draw an age-progression sheet.

The model flags (shared with ``agingrt video``) live here too: :func:`add_model_arguments`,
:func:`load_engine` and :func:`model_options`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ..backends.registry import backend_help, backend_names
from ..errors import AgingError, InputError, MediaError, NoFaceError


# --- shared with `agingrt video` -------------------------------------------------------------------------
def _face_choice(text: str) -> str | int:
    if text in ("all", "largest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, largest or a face number, got {text!r}") from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that pick and configure the model, and the model options of Engine.age."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help="ageflow, acgan, cusp or pada (default: read from a pyagingrt checkpoint)")
    g.add_argument(
        "--checkpoint",
        required=True,
        help="weights: a pyagingrt .safetensors checkpoint or an official checkpoint of the model (required)",
    )
    g.add_argument("--config", help="model config, e.g. paper or tiny (default: the checkpoint's, else paper)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "bf16", "auto"),
        help="(default: fp32) fp16 needs CUDA; auto: fp16 on a GPU (bf16 if the native fp16 engine overflows), "
        "fp32 on CPU",
    )
    g.add_argument(
        "--backend",
        default="torch",
        choices=backend_names(auto=True),
        help=f"{backend_help()} (default: torch)",
    )
    g.add_argument("--dex", help="CUSP: DEX VGG-16 weights, when the snapshot carries none (default: none)")
    g.add_argument("--clip", help="PADA: CLIP directory in Hugging Face layout (default: none = random CLIP)")
    g.add_argument("--latent", help="PADA: DiffAE latent.pkl when converting a .ckpt (default: beside it)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw; same seed, same result (default: 0)")
    g.add_argument(
        "--face",
        type=_face_choice,
        default="all",
        help="which faces: all, largest, or N = the N-th face from the left, from 1 (default: all)",
    )
    o = p.add_argument_group("model options (only the models that take them)")
    o.add_argument("--sigma-m", type=float, help="CUSP: blur inside the age-relevant mask, pixels (default: model's)")
    o.add_argument("--sigma-g", type=float, help="CUSP: blur everywhere, pixels (default: model's)")
    o.add_argument("--text", help='PADA: describe the target age in words, e.g. "man\'s face in his sixties"')
    o.add_argument("--reference", type=Path, help="PADA: a photo of someone at the target age (default: none)")
    o.add_argument("--samples", type=int, help="PADA: number of different results per face (default: 1)")


def load_engine(args: argparse.Namespace) -> Any:
    """``pyagingrt.load`` from the model flags."""
    import pyagingrt

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"checkpoint {checkpoint} does not exist or is not a file")
    extra = {k: getattr(args, k) for k in ("dex", "clip", "latent") if getattr(args, k, None) is not None}
    common = {"device": args.device, "precision": args.precision, "config": args.config, "backend": args.backend}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pyagingrt.RandomWeightsWarning)
        if args.model is None:
            engine = pyagingrt.load(checkpoint, **common, **extra)
        else:
            engine = pyagingrt.load(args.model, checkpoint, **common, **extra)
    for w in caught:  # e.g. PADA without --clip: say so, on one line, but go on
        print(f"agingrt: warning: {w.message}", file=sys.stderr)
    return engine


def check_ages(engine: Any, ages: list[float]) -> None:
    """Reject target ages the model cannot take now, before any photo is read."""
    import torch

    adapter = getattr(engine, "adapter", None)
    if adapter is not None:
        adapter.validate_ages(engine.config, torch.tensor(ages, dtype=torch.float64))


def model_options(args: argparse.Namespace, pipeline: Any) -> dict[str, Any]:
    """Engine.age keyword options from the flags that were given (the model rejects ones it does not take)."""
    from ..pipeline.media import read_image

    options: dict[str, Any] = {}
    for flag, name in (("sigma_m", "sigma_m"), ("sigma_g", "sigma_g"), ("text", "text"), ("samples", "num_samples")):
        value = getattr(args, flag)
        if value is not None:
            options[name] = value
    if args.reference is not None:
        image, _ = read_image(args.reference, args.max_pixels)
        options["reference"] = pipeline.reference_crop(image)  # aligned like the input faces [1, 3, S, S]
    return options


def parse_ages(text: str) -> list[float]:
    try:
        ages = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        msg = f"ages must be numbers separated by commas, e.g. 10,30,50,70; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not ages:
        raise argparse.ArgumentTypeError("give at least one age")
    return ages


def note(message: str) -> None:
    print(f"agingrt: note: {message}", file=sys.stderr)


# --- agingrt age -----------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "age",
        help="age the faces in photos (or draw an age-progression sheet)",
        description="Detect every face, align it to the model's crop, age it and blend it back; the rest of the "
        "photo is untouched. Outputs are written beside each photo as NAME_age70.jpg unless -o or --out-dir "
        "says otherwise. Example: agingrt age me.jpg --checkpoint acgan.safetensors --age 60",
    )
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo files or folders of photos")
    ages = p.add_mutually_exclusive_group(required=True)
    ages.add_argument("--age", type=float, help="target age in years")
    ages.add_argument("--ages", type=parse_ages, help="several target ages, e.g. 10,30,50,70: one output per age")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "-o", "--output", type=Path, help="output file for a single photo (several ages or samples add a suffix)"
    )
    out.add_argument("--out-dir", type=Path, help="folder for the outputs (default: beside each photo)")
    p.add_argument(
        "--sheet", type=Path, help="with --ages and one photo: write an age-progression sheet here (input + each age)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="photos larger than this are downscaled first, with a note (default: 40000000, 8K fits)",
    )
    add_model_arguments(p)
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace, photos: list[Path], ages: list[float], samples: int) -> list[list[Path]]:
    """Output paths: per photo, one per (age, sample)."""
    plan = []
    for photo in photos:
        if args.output is not None:
            base = args.output
        else:
            folder = args.out_dir if args.out_dir is not None else photo.parent
            base = folder / f"{photo.stem}{photo.suffix or '.png'}"
        paths = []
        for age in ages:
            for k in range(samples):
                tag = "" if args.output is not None and len(ages) == 1 else f"_age{age:g}"
                tag += f"_s{k}" if samples > 1 else ""
                paths.append(base.with_name(f"{base.stem}{tag}{base.suffix}"))
        plan.append(paths)
    return plan


def run(args: argparse.Namespace) -> int:
    from ..pipeline.faces import FacePipeline
    from ..pipeline.media import check_writable, list_images, read_image, write_image
    from ..pipeline.sheet import progression_sheet

    ages = [args.age] if args.age is not None else args.ages
    photos = [p for given in args.photos for p in list_images(given)]
    samples = args.samples or 1
    if samples < 1:
        raise InputError(f"--samples must be 1 or more, got {samples}")
    if args.output is not None and len(photos) > 1:
        raise InputError(f"-o names one output but {len(photos)} photos were given; use --out-dir")
    if any(given.is_dir() for given in args.photos) and args.output is None and args.out_dir is None:
        raise InputError("a folder of photos needs --out-dir (outputs beside the photos would mix with them)")
    if args.sheet is not None and (len(photos) != 1 or args.ages is None):
        raise InputError("--sheet needs exactly one photo and --ages, e.g. --ages 10,30,50,70")
    plan = _outputs(args, photos, ages, samples)
    for path in [p for paths in plan for p in paths] + ([args.sheet] if args.sheet else []):
        check_writable(path)

    engine = load_engine(args)
    check_ages(engine, ages)
    pipeline = FacePipeline(engine, face=args.face)
    options = model_options(args, pipeline)
    failures = 0
    for photo, outputs in zip(photos, plan, strict=True):
        try:
            image, downscaled = read_image(photo, args.max_pixels)
            if downscaled:
                note(downscaled)
            faces = pipeline.find_faces(image)
        except (MediaError, NoFaceError) as exc:
            if len(photos) == 1:
                raise
            print(f"agingrt: error: {photo}: {exc}", file=sys.stderr)  # go on with the other photos
            failures += 1
            continue
        results = []
        for age in ages:
            aged = pipeline.age(image, age, seed=args.seed, faces=faces, **options)
            results.extend(aged if aged.ndim == 4 else [aged])  # K samples, or one image
        for path, result in zip(outputs, results, strict=True):
            write_image(path, result)
        print(f"{photo}: {len(faces)} face(s) -> {', '.join(str(p) for p in outputs)}")
        if args.sheet is not None:
            labels = [f"age {a:g}" + (f" #{k}" if samples > 1 else "") for a in ages for k in range(samples)]
            write_image(args.sheet, progression_sheet(image, results, labels, faces))
            print(f"progression sheet -> {args.sheet}")
    if failures:
        raise AgingError(f"{failures} of {len(photos)} photos failed (see above)")
    return 0
