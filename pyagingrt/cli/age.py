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
    weights = g.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--checkpoint",
        help="weights: a pyagingrt .safetensors checkpoint or an official checkpoint of the model "
        "(this or --random-weights is required)",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="no weights at all: try the command with random ones (needs --model; --config defaults to tiny). "
        "The output is MEANINGLESS noise, only good for checking that everything runs",
    )
    g.add_argument(
        "--config",
        help="model config, e.g. paper or tiny (default: the checkpoint's; tiny with --random-weights)",
    )
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
    add_model_file_arguments(g)
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


MODEL_FILES = ("dex", "clip", "latent")


def add_model_file_arguments(g: argparse._ActionsContainer) -> None:
    """The extra files some models load beside their checkpoint; :func:`model_files` reads them back."""
    g.add_argument("--dex", help="CUSP: DEX VGG-16 weights, when the snapshot carries none (default: none)")
    g.add_argument("--clip", help="PADA: CLIP directory in Hugging Face layout (default: none = random CLIP)")
    g.add_argument("--latent", help="PADA: DiffAE latent.pkl when converting a .ckpt (default: beside it)")


def model_files(args: argparse.Namespace) -> dict[str, str]:
    """The load options of :func:`add_model_file_arguments` that were given."""
    return {k: getattr(args, k) for k in MODEL_FILES if getattr(args, k, None) is not None}


RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS (--random-weights): the output is MEANINGLESS noise, not an aged face; "
    "it only shows that the command runs. Pass --checkpoint for real results."
)


def load_engine(args: argparse.Namespace) -> Any:
    """``pyagingrt.load`` from the model flags; warnings (random CLIP, missing DEX) are printed on one line."""
    extra = model_files(args)
    common = {"device": args.device, "precision": args.precision, "config": args.config, "backend": args.backend}
    if args.random_weights:
        if args.model is None:
            raise InputError("--random-weights needs --model (ageflow, acgan, cusp or pada)")
        common["config"] = args.config or "tiny"
        warn(RANDOM_WEIGHTS_WARNING)
    else:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise InputError(f"checkpoint {checkpoint} does not exist or is not a file")
    if args.random_weights:
        # "no checkpoint given" was said above, louder
        return load_saying_warnings(args.model, None, skip="no checkpoint given", **common, **extra)
    if args.model is None:
        return load_saying_warnings(checkpoint, **common, **extra)
    return load_saying_warnings(args.model, checkpoint, **common, **extra)


def load_saying_warnings(*args: Any, skip: str | None = None, **kwargs: Any) -> Any:
    """``pyagingrt.load(*args, **kwargs)`` with each warning it raises (random CLIP, missing DEX) printed on one
    ``agingrt: warning:`` line, except those containing ``skip``; the load goes on."""
    import pyagingrt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(*args, **kwargs)
    for w in caught:
        if skip is None or skip not in str(w.message):
            warn(str(w.message))
    return engine


def warn(message: str) -> None:
    from .messages import cli_words

    print(f"agingrt: warning: {cli_words(message)}", file=sys.stderr)


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
        image, _ = read_image(args.reference, args.max_pixels)  # alpha is not needed
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
EXAMPLES = """examples:
  agingrt age me.jpg --model acgan --checkpoint 00040_netG.pth --age 60
  agingrt age me.jpg --model cusp --checkpoint network-snapshot.pkl --ages 20,40,60 --sheet sheet.jpg
  agingrt age photos/ --out-dir aged/ --checkpoint cusp.safetensors --age 65
  agingrt age me.jpg --model acgan --random-weights --age 60   # no weights: meaningless output, to try it
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..pipeline.media import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "age",
        help="age the faces in photos (or draw an age-progression sheet)",
        description="Detect every face, align it to the model's crop, age it and blend it back; the rest of the "
        "photo is untouched, and the output keeps the photo's size and transparency. Outputs are written beside "
        "each photo as NAME_age70.jpg unless -o or --out-dir says otherwise.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo files or folders of photos")
    ages = p.add_mutually_exclusive_group()
    ages.add_argument("--age", type=float, help="target age in years (PADA: optional with --text or --reference)")
    ages.add_argument("--ages", type=parse_ages, help="several target ages, e.g. 10,30,50,70: one output per age")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "-o", "--output", type=Path, help="output file for a single photo (several ages or samples add a suffix)"
    )
    out.add_argument(
        "--out-dir", type=Path, help="folder for the outputs, created if missing (default: beside each photo)"
    )
    p.add_argument(
        "--sheet",
        type=Path,
        help="with --ages and one photo: write an age-progression sheet here (input + each age); then only the "
        "sheet is written, unless -o or --out-dir asks for the aged photos too",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse photos larger than this; below it photos are aged at full size "
        f"(default: {DEFAULT_MAX_PIXELS}, a 14000x14000 photo; about 20 bytes of memory per pixel)",
    )
    add_model_arguments(p)
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace, photos: list[Path], ages: list[float], samples: int) -> list[list[Path]]:
    """Output paths: per photo, one per (age, sample); none with --sheet alone (only the sheet was asked for)."""
    plan = []
    for photo in photos:
        if args.sheet is not None and args.output is None and args.out_dir is None:
            plan.append([])
            continue
        if args.output is not None:
            base = args.output
        else:
            folder = args.out_dir if args.out_dir is not None else photo.parent
            base = folder / f"{photo.stem}{photo.suffix or '.png'}"
        paths = []
        for age in ages:
            for k in range(samples):
                tag = "" if args.output is not None and len(ages) == 1 else _age_tag(age, args)
                tag += f"_s{k}" if samples > 1 else ""
                paths.append(base.with_name(f"{base.stem}{tag}{base.suffix}"))
        plan.append(paths)
    return plan


def _age_tag(age: float | None, args: argparse.Namespace) -> str:
    if age is None:  # the target is PADA's --text or --reference
        return "_text" if args.text is not None else "_reference"
    return f"_age{age:g}"


def run(args: argparse.Namespace) -> int:
    from ..pipeline.faces import FacePipeline
    from ..pipeline.media import ALPHA_FORMATS, check_writable, image_format, list_images, read_image, write_image
    from ..pipeline.sheet import progression_sheet

    ages: list[float | None] = [args.age] if args.age is not None else args.ages
    if ages is None:
        if args.text is None and args.reference is None:
            raise InputError("give a target: --age or --ages (or, for pada, --text or --reference)")
        ages = [None]  # the text or reference face is the target
    photos = [p for given in args.photos for p in list_images(given)]
    samples = args.samples or 1
    if samples < 1:
        raise InputError(f"--samples must be 1 or more, got {samples}")
    if args.max_pixels < 1:
        raise InputError(f"--max-pixels must be 1 or more, got {args.max_pixels}")
    if args.output is not None and len(photos) > 1:
        raise InputError(f"-o names one output but {len(photos)} photos were given; use --out-dir")
    if any(given.is_dir() for given in args.photos) and args.output is None and args.out_dir is None:
        raise InputError("a folder of photos needs --out-dir (outputs beside the photos would mix with them)")
    if args.sheet is not None and (len(photos) != 1 or args.ages is None):
        raise InputError("--sheet needs exactly one photo and --ages, e.g. --ages 10,30,50,70")
    if args.out_dir is not None:
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise InputError(f"--out-dir {args.out_dir} is a file, not a folder")
        args.out_dir.mkdir(parents=True, exist_ok=True)
    plan = _outputs(args, photos, ages, samples)
    for path in [p for paths in plan for p in paths] + ([args.sheet] if args.sheet else []):
        image_format(path)  # an unknown suffix fails now, not after the model ran
        check_writable(path)

    engine = load_engine(args)
    if ages == [None]:  # the model still takes an age; --text / --reference replace what it means (PADA)
        ages = [engine.age_groups[-1].representative_age()]
    check_ages(engine, ages)
    pipeline = FacePipeline(engine, face=args.face)
    options = model_options(args, pipeline)
    failures = 0
    for photo, outputs in zip(photos, plan, strict=True):
        try:
            image, alpha = read_image(photo, args.max_pixels)
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
        if outputs:  # none with --sheet alone
            for path, result in zip(outputs, results, strict=True):
                write_image(path, result, alpha)
        dropped = [p for p in outputs if alpha is not None and image_format(p) not in ALPHA_FORMATS]
        if dropped:
            note(f"{photo.name} has transparency, which {dropped[0].suffix} cannot keep; write .png to keep it")
        if outputs:
            print(f"{photo}: {len(faces)} face(s) -> {', '.join(str(p) for p in outputs)}")
        if args.sheet is not None:
            labels = [f"age {a:g}" + (f" #{k}" if samples > 1 else "") for a in ages for k in range(samples)]
            write_image(args.sheet, progression_sheet(image, results, labels, faces))
            print(f"{photo}: {len(faces)} face(s) -> progression sheet {args.sheet}")
    if args.random_weights:
        warn(RANDOM_WEIGHTS_WARNING)  # again, after the outputs, where it cannot be missed
    if failures:
        raise AgingError(f"{failures} of {len(photos)} photos failed (see above)")
    return 0
