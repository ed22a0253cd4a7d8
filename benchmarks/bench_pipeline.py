"""Time the face pipeline's stages on one 1080p frame: detect, align (crop), paste-back, encode, decode.

    python benchmarks/bench_pipeline.py [--device cpu|cuda] [--repeats 20] [--size 256] [--threads N]

The frame is skimage's astronaut portrait upscaled x2 into a 1920 x 1080 canvas (face ~180 px wide). The
model is left out (it has its own benchmark, `agingrt bench`): an identity stands in, so the figures are the
pipeline's own cost per frame with one face. Medians of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import cv2
import numpy as np
import torch
from skimage import data

from pyagingrt.pipeline.align import Alignment
from pyagingrt.pipeline.faces import FacePipeline


class _Identity:
    model, stochastic = "identity", False

    def __init__(self, size: int, device: torch.device) -> None:
        self.input_size, self.device = size, device

    def age(self, crops, target_age, seed=None, **options):
        return crops


def _frame() -> np.ndarray:
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[40:1064, 448:1472] = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    return frame


def _time(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return 1000 * statistics.median(runs)


def _warp_rows(pipe: FacePipeline, frame: np.ndarray, args: argparse.Namespace, sync) -> list[tuple[str, float]]:
    faces = pipe.find_faces(frame)
    mats = pipe.transforms(np.stack([f.landmarks for f in faces]))
    photo = pipe.to_device(frame)
    crops = pipe.crops(photo, mats)
    kind = pipe.alignment.kind
    return [
        (f"align {kind} -> {args.size}", _time(lambda: pipe.crops(photo, mats), args.repeats, sync)),
        (f"paste-back {kind}", _time(lambda: pipe.paste(photo, crops, mats), args.repeats, sync)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per stage (default: 20)")
    parser.add_argument("--size", type=int, default=256, help="crop side, 256 (FFHQ models) or 224 (default: 256)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default (default: 0)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    frame = _frame()
    rows = []
    for alignment in (Alignment("ffhq"), Alignment("template", 0.1)):
        rows += _warp_rows(FacePipeline(_Identity(args.size, device), alignment=alignment), frame, args, sync)
    pipe = FacePipeline(_Identity(args.size, device))
    rows.insert(
        0, ("detect (MTCNN, 1080p -> 1024 side)", _time(lambda: pipe.detector.detect(frame), args.repeats, sync))
    )
    rows.append(("to device + back", _time(lambda: pipe.to_device(frame).cpu().numpy(), args.repeats, sync)))

    import av

    buffer = io.BytesIO()
    out = av.open(buffer, "w", format="mp4")
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt, stream.options = 1920, 1080, "yuv420p", {"crf": "18"}
    # a real clip's frames differ: jitter the frame so x264 cannot skip the work
    frames = [np.roll(frame, k, axis=1) for k in range(args.repeats + 1)]
    index = iter(range(10**9))

    def encode() -> None:
        video = av.VideoFrame.from_ndarray(frames[next(index) % len(frames)], format="rgb24")
        out.mux(stream.encode(video))

    rows.append(("encode (libx264 crf 18, 1080p)", _time(encode, args.repeats, sync)))
    out.mux(stream.encode(None))
    out.close()
    buffer.seek(0)
    decoded = av.open(buffer)
    packets = [p for p in decoded.demux(video=0) if p.size]
    codec = av.CodecContext.create("h264", "r")
    codec.extradata = decoded.streams.video[0].codec_context.extradata
    cursor = iter(packets)

    def decode() -> None:
        for f in codec.decode(next(cursor)):
            f.to_ndarray(format="rgb24")

    rows.append(("decode (h264 1080p -> RGB)", _time(decode, min(args.repeats, len(packets) - 1), sync)))
    print(f"device {device}, torch threads {torch.get_num_threads()}, crop {args.size}, one face, median ms/frame")
    for name, ms in rows:
        print(f"  {name:38s} {ms:8.1f}")


if __name__ == "__main__":
    main()
