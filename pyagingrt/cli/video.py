"""``agingrt video IN -o OUT``: age the faces of a video, keeping its size, frame rate, rotation and audio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .age import add_model_arguments, check_ages, load_engine, model_options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


EXAMPLES = """examples:
  agingrt video in.mp4 -o old.mp4 --model cusp --checkpoint network-snapshot.pkl --age 65
  agingrt video in.mp4 -o preview.mp4 --checkpoint acgan.safetensors --age 60 --max-frames 48
  agingrt video in.mp4 -o old.mp4 --model acgan --random-weights --age 60   # no weights: meaningless output
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "video",
        help="age the faces in a video (keeps resolution, frame rate, rotation and audio)",
        description="Decode, track every face (detection every few frames, optical flow in between, smoothed "
        "landmarks), age the faces in batches, blend them back and encode; frames without a face pass through "
        "unchanged. A progress bar shows frames, fps and time left; the end prints the time of each stage.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="input video (anything FFmpeg reads: mp4, mov, mkv, ...)")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output video: .mp4, .mov, .mkv, .avi or .webm (required)"
    )
    p.add_argument("--age", type=float, required=True, help="target age in years (required)")
    v = p.add_argument_group("video")
    v.add_argument("--detect-every", type=_positive, default=5, help="run the detector every N frames (default: 5)")
    v.add_argument("--batch-size", type=_positive, default=8, help="faces per model call (default: 8)")
    v.add_argument("--no-smooth", action="store_true", help="do not smooth landmarks over time (default: smooth)")
    v.add_argument("--codec", help="video encoder (default: libx264; libvpx-vp9 for .webm)")
    v.add_argument("--crf", type=int, default=18, help="x264/x265/VP9 quality, lower is better (default: 18)")
    v.add_argument("--max-frames", type=_positive, help="stop after N frames, for a preview (default: all)")
    v.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    add_model_arguments(p)
    p.set_defaults(func=run, max_pixels=40_000_000)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.faces import FacePipeline
    from ..pipeline.media import check_writable
    from ..pipeline.video import VideoSettings, age_video, open_video

    if args.samples not in (None, 1):
        raise InputError("a video takes one sample per face; leave --samples out")
    if args.output.resolve() == args.input.resolve():
        raise InputError("the output would overwrite the input; choose another -o")
    open_video(args.input).close()  # a clear error for a bad input before the model loads
    check_writable(args.output)
    settings = VideoSettings(
        detect_every=args.detect_every,
        batch_size=args.batch_size,
        face=args.face,
        smooth=not args.no_smooth,
        codec=args.codec,
        crf=args.crf,
        max_frames=args.max_frames,
    )
    engine = load_engine(args)
    check_ages(engine, [args.age])
    options = model_options(args, FacePipeline(engine, face=args.face))
    times = age_video(
        engine,
        args.input,
        args.output,
        args.age,
        seed=args.seed,
        options=options,
        settings=settings,
        progress=not args.no_progress,
    )
    print(f"{args.input} -> {args.output}")
    print(f"time: {times.summary()}", file=sys.stderr)
    return 0
