"""Age the faces of a video: decode -> detect/track -> align, model, paste back -> encode, overlapped.

Four stages run at once, joined by bounded queues: a decode thread (PyAV), a detect thread (detector every few
frames, optical flow in between), the caller's thread (align, batched model calls and paste-back on the model's
device: torch releases the GIL there) and an encode thread (PyAV). Audio packets travel down the same queues
in their original order and are copied into the output without re-encoding. Frames are processed upright
(the stream's rotation applied) and turned back before encoding, and the output carries the same rotation,
resolution, frame timestamps (so the frame rate) and audio. Frames without a face pass through unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AgingError, InputError, MediaError, OutputError
from .detect import FaceDetector, get_detector
from .faces import AgingEngine, FacePipeline, run_engine
from .media import IMAGE_SUFFIXES, atomic_output
from .timestamps import FrameClock
from .track import FaceTracker, TrackedFace

__all__ = ["STAGES", "StageTimes", "VideoSettings", "age_video", "default_codec", "open_video"]

STAGES = ("decode", "detect", "align", "model", "paste-back", "encode")
_END = object()  # end of stream marker on the queues


class StageTimes:
    """Seconds spent in each stage (each stage runs in one thread, so the sums do not overlap within a stage)."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.frames = 0
        self.wall = 0.0
        self._sync = sync  # CUDA: wait for queued kernels so their time lands in the right stage

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._sync is not None and stage in ("align", "model", "paste-back"):
            self._sync()
        self.seconds[stage] += time.perf_counter() - start

    def summary(self) -> str:
        """One line: per-stage totals and milliseconds per frame, then frames, wall time and fps."""
        per = max(self.frames, 1)
        parts = [f"{name} {secs:.2f} s ({1000 * secs / per:.1f} ms/frame)" for name, secs in self.seconds.items()]
        fps = self.frames / self.wall if self.wall > 0 else 0.0
        return f"{self.frames} frames in {self.wall:.2f} s ({fps:.1f} fps); " + ", ".join(parts)


@dataclass(frozen=True)
class VideoSettings:
    """How ``age_video`` runs (the CLI flags of ``agingrt video``)."""

    detect_every: int = 5  # run the detector on every N-th frame, track in between
    batch_size: int = 8  # faces per model call (deterministic models)
    face: str | int = "all"
    smooth: bool = True  # 1-euro smoothing of landmarks
    codec: str | None = None  # None: the container's default (default_codec)
    crf: int = 18  # x264 quality: 18 is visually lossless
    max_frames: int | None = None  # stop after this many frames (previews)
    queue_frames: int = 16  # frames in flight per queue: bounds memory (16 x 6 MB at 1080p)
    detector: str = "mtcnn"


@dataclass
class _Frame:
    index: int
    image: np.ndarray  # uint8 [H, W, 3], upright
    pts: int | None
    time_base: Any
    rotation: int  # degrees, counter-clockwise, as PyAV reports it
    faces: list[TrackedFace] = field(default_factory=list)


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _stored(image: np.ndarray, rotation: int) -> np.ndarray:
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, -turns)) if turns else image


class _Worker(threading.Thread):
    """A stage thread: runs ``body``, forwards any exception to the caller through ``errors``."""

    def __init__(self, name: str, body: Callable[[], None], errors: queue.Queue, stop: threading.Event) -> None:
        super().__init__(name=f"agingrt-{name}", daemon=True)
        self._body, self._errors, self._halt = body, errors, stop

    def run(self) -> None:
        try:
            self._body()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            self._errors.put(exc)
            self._halt.set()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the run was stopped (a full queue would block a dying pipeline forever)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise AgingError("video needs PyAV: pip install av (or pip install 'pyagingrt[video]')") from exc
    return av


def open_video(path: Path) -> Any:
    av = _av()
    if not path.is_file():
        raise MediaError(f"{path} does not exist or is not a file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path} is not a video that can be read (corrupt, truncated or not a video): {exc}") from exc
    if path.suffix.lower() in IMAGE_SUFFIXES or _is_still_image(container):
        container.close()
        raise MediaError(f"{path} is a still image, not a video; to age a photo use: agingrt age {path}")
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path} has no video stream")
    return container


def _is_still_image(container: Any) -> bool:
    """FFmpeg reads a photo as a one-frame video through its image demuxers (image2, png_pipe, jpeg_pipe...)."""
    names = set(container.format.name.split(","))
    return bool(names & {"image2", "image2pipe"}) or any(n.endswith("_pipe") for n in names)


def age_video(
    engine: AgingEngine,
    src: Path,
    dst: Path,
    target_age: float,
    *,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    settings: VideoSettings = VideoSettings(),
    detector: FaceDetector | None = None,
    progress: bool = True,
) -> StageTimes:
    """Age every tracked face of ``src`` and write ``dst`` (atomically: nothing is left behind on failure).

    Track t's faces are aged with seed ``seed + t``, so a stochastic model gives a face the same noise in
    every frame. Returns the per-stage times.
    """
    from tqdm import tqdm

    av = _av()
    options = dict(options or {})
    if options.get("num_samples", 1) != 1:
        raise InputError("a video takes one sample per face; leave --samples out")
    pipe = FacePipeline(engine, detector or get_detector(settings.detector), face=settings.face)
    device = pipe.device
    times = StageTimes(torch.cuda.synchronize if device.type == "cuda" else None)
    container = open_video(src)
    vin = container.streams.video[0]
    ains = list(container.streams.audio)
    rate = vin.average_rate or vin.guessed_rate or 25
    total = vin.frames or None
    if settings.max_frames is not None:
        total = min(total, settings.max_frames) if total else settings.max_frames

    stop, errors = threading.Event(), queue.Queue()
    decoded: queue.Queue = queue.Queue(settings.queue_frames)
    detected: queue.Queue = queue.Queue(settings.queue_frames)
    aged: queue.Queue = queue.Queue(settings.queue_frames)

    def decode() -> None:
        count = 0
        try:
            for packet in container.demux(vin, *ains):
                if stop.is_set() or (settings.max_frames is not None and count >= settings.max_frames):
                    break
                if packet.stream.type == "audio":
                    if packet.dts is not None and not _put(decoded, packet, stop):
                        return
                    continue
                with times("decode"):
                    frames = packet.decode()
                for frame in frames:
                    with times("decode"):
                        rotation = round(frame.rotation or 0)
                        image = _upright(frame.to_ndarray(format="rgb24"), rotation)
                    item = _Frame(count, image, frame.pts, frame.time_base, rotation)
                    if not _put(decoded, item, stop):
                        return
                    count += 1
        except av.error.FFmpegError as exc:
            raise MediaError(f"{src} is corrupt or truncated: decoding stopped at frame {count}: {exc}") from exc
        if count == 0:
            raise MediaError(f"{src} holds no decodable video frame")
        _put(decoded, _END, stop)

    def detect() -> None:
        tracker = FaceTracker(pipe.detector, float(rate), settings.detect_every, settings.face, smooth=settings.smooth)
        while (item := _get(decoded, stop)) is not _END:
            if isinstance(item, _Frame):
                with times("detect"):
                    item.faces = tracker.update(item.image)
            if not _put(detected, item, stop):
                return
        _put(detected, _END, stop)

    out_format = _muxer(dst)

    def encode(out: Any, audio_out: dict[int, Any]) -> None:
        try:
            vout, clock = None, None
            held: collections.deque[_Frame] = collections.deque()  # frames waiting for their timestamp
            waiting: list[Any] = []  # audio before the first frame: the header needs every stream first
            bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, leave=False)

            def emit(item: _Frame) -> None:
                frame = av.VideoFrame.from_ndarray(_stored(item.image, item.rotation), format="rgb24")
                frame.pts, frame.time_base = clock.pop(), clock.time_base
                out.mux(vout.encode(frame))

            while (item := _get(aged, stop)) is not _END:
                if not isinstance(item, _Frame):
                    if vout is None:
                        waiting.append(item)
                    else:
                        item.stream = audio_out[item.stream.index]
                        out.mux(item)
                    continue
                with times("encode"):
                    if vout is None:
                        vout = _video_stream(out, out_format, vin, item, rate, settings)
                        # the encoder's time base: the muxer may change the stream's when it writes the header
                        clock = FrameClock(vout.codec_context.time_base, rate)
                        for packet in waiting:
                            packet.stream = audio_out[packet.stream.index]
                            out.mux(packet)
                        waiting.clear()
                    clock.push(item.pts, item.time_base or vin.time_base)
                    held.append(item)
                    if clock.ready:
                        emit(held.popleft())
                times.frames += 1
                bar.update(1)
            if not stop.is_set() and vout is not None:
                with times("encode"):
                    while held:
                        emit(held.popleft())
                    out.mux(vout.encode(None))
            bar.close()
        finally:
            out.close()

    start = time.perf_counter()
    try:
        with atomic_output(dst) as tmp:
            out = av.open(str(tmp), "w", format=out_format)  # here, not in the thread: see signals in the CLI
            workers = [_Worker(n, b, errors, stop) for n, b in (("decode", decode), ("detect", detect))]
            try:  # audio is copied as it is: the container must hold its codec
                audio_out = {a.index: out.add_stream_from_template(a) for a in ains}
            except ValueError as exc:
                out.close()
                codecs = ", ".join(sorted({a.codec_context.name for a in ains}))
                raise OutputError(
                    f"cannot write {dst}: a {dst.suffix} file cannot hold the input's {codecs} audio, which is copied "
                    "without re-encoding; write .mkv (holds any codec) or .mp4"
                ) from exc
            encoder = _Worker("encode", functools.partial(encode, out, audio_out), errors, stop)
            for w in [*workers, encoder]:
                w.start()
            try:
                _model_stage(pipe, engine, detected, aged, stop, times, target_age, seed, options, settings)
            except BaseException:
                stop.set()
                raise
            finally:
                for w in [*workers, encoder]:
                    w.join()
            if not errors.empty():
                raise errors.get()
            if times.frames == 0:
                raise MediaError(f"{src} holds no decodable video frame")
    except av.error.FFmpegError as exc:
        raise OutputError(f"cannot encode {dst}: {exc}") from exc
    finally:
        container.close()
    times.wall = time.perf_counter() - start
    return times


_MUXERS = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}


def _muxer(dst: Path) -> str:
    suffix = dst.suffix.lower().lstrip(".")
    if suffix not in _MUXERS:
        raise OutputError(f"cannot write {dst}: unknown video type {dst.suffix!r}; use .mp4, .mov, .mkv, .avi or .webm")
    return _MUXERS[suffix]


def default_codec(dst: Path) -> str:
    """The encoder for ``dst`` by default: VP9 for WebM (which holds only VP8/VP9/AV1), else H.264."""
    return "libvpx-vp9" if _muxer(dst) == "webm" else "libx264"


def _video_stream(out: Any, out_format: str, vin: Any, first: _Frame, rate: Any, settings: VideoSettings) -> Any:
    """The output video stream: the input's stored size, timestamps and rotation."""
    height, width = _stored(first.image, first.rotation).shape[:2]
    codec = settings.codec or ("libvpx-vp9" if out_format == "webm" else "libx264")  # see default_codec
    vout = out.add_stream(codec, rate=rate)
    vout.width, vout.height = width, height
    # 4:2:0 needs even sides; 4:4:4 keeps an odd-sized video at its exact size
    vout.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    # AVI has no per-frame timestamps: its time base is the frame rate players show, so it must be 1/fps;
    # elsewhere the input's time base keeps its timestamps exactly
    time_base = Fraction(1) / Fraction(rate) if out_format == "avi" else vin.time_base
    vout.codec_context.time_base = time_base
    vout.time_base = time_base
    if out_format == "avi":  # nor can it order B-frames: players would see the timestamps go backwards
        vout.codec_context.max_b_frames = 0
    if codec in ("libx264", "libx265"):
        vout.options = {"crf": str(settings.crf)}
    elif codec.startswith("libvpx"):
        vout.options = {"crf": str(settings.crf), "b": "0"}  # constant quality
    if first.rotation:
        vout.set_display_rotation(first.rotation)
    return vout


def _model_stage(
    pipe: FacePipeline,
    engine: AgingEngine,
    inbox: queue.Queue,
    outbox: queue.Queue,
    stop: threading.Event,
    times: StageTimes,
    target_age: float,
    seed: int,
    options: dict[str, Any],
    settings: VideoSettings,
) -> None:
    """Collect frames until ``batch_size`` faces are waiting, then align, age and paste them in one go."""
    pending: list[Any] = []  # frames and audio packets, in stream order
    waiting = 0

    def flush() -> bool:
        frames = [p for p in pending if isinstance(p, _Frame) and p.faces]
        if frames:
            with times("align"):
                photos = [pipe.to_device(f.image, copy=False) for f in frames]  # uint8 [H, W, 3] each, ours to change
                mats = [pipe.transforms(np.stack([t.landmarks for t in f.faces])) for f in frames]  # [n_f, 3, 3]
                crops = torch.cat([pipe.crops(p, m) for p, m in zip(photos, mats, strict=True)])  # [N, 3, S, S]
            seeds = [seed + t.track_id for f in frames for t in f.faces]
            with times("model"):
                result = run_engine(engine, crops, target_age, seeds, options)  # [N, 3, S, S]
            with times("paste-back"):
                start = 0
                for frame, photo, mat in zip(frames, photos, mats, strict=True):
                    frame.image = pipe.paste(photo, result[start : start + len(mat)], mat).cpu().numpy()
                    start += len(mat)
        for item in pending:
            if not _put(outbox, item, stop):
                return False
        pending.clear()
        return True

    while (item := _get(inbox, stop)) is not _END:
        pending.append(item)
        if isinstance(item, _Frame):
            waiting += len(item.faces)
            if waiting >= settings.batch_size or len(pending) >= settings.queue_frames:
                if not flush():
                    return
                waiting = 0
    if not stop.is_set() and flush():
        _put(outbox, _END, stop)
