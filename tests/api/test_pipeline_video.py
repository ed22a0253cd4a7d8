"""The video pipeline in-process: timing, audio and rotation kept, stable faces, pass-through, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pyagingrt.errors import MediaError
from pyagingrt.pipeline.video import STAGES, VideoSettings, age_video
from tests.api.pipeline_adapters import load_test_engine, read_test_video, register_test_models, write_test_video

cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def noisy(monkeypatch):
    register_test_models(monkeypatch)
    return load_test_engine("noisy", size=32)


@pytest.fixture(scope="module")
def portrait_frame() -> np.ndarray:
    """320 x 240 frame with the astronaut's face ~70 px wide on the left."""
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[:, :240] = cv2.resize(skimage_data.astronaut()[0:320, 80:400], (240, 240), interpolation=cv2.INTER_AREA)
    return frame


def _only_outputs(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name != name)


def test_static_video_keeps_count_rate_audio_and_gives_one_face(tmp_path, noisy, portrait_frame):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_test_video(src, [portrait_frame] * 12, fps=24)
    times = age_video(noisy, src, dst, 70, seed=1, settings=VideoSettings(crf=0, batch_size=4), progress=False)
    before, after = read_test_video(src), read_test_video(dst)
    assert len(after["frames"]) == len(before["frames"]) == 12
    assert after["rate"] == before["rate"] == 24
    assert after["audio_frames"] == before["audio_frames"] > 0
    assert after["frames"][0].shape == (240, 320, 3)
    # a new face is aged once the detector confirmed it in a second frame (pipeline/track.py), so frame 0 is
    # the input's; from frame 1 on the face was changed (noise std 0.2, i.e. ~50 levels) ...
    assert np.abs(after["frames"][0].astype(int) - before["frames"][0].astype(int)).max() <= 12  # 4:2:0 rounding
    assert np.abs(after["frames"][1].astype(int) - before["frames"][1].astype(int)).max() > 30
    # ... and, with a fixed seed per track, identically in every frame: no flicker (lossless encode; 1 level of
    # slack for the tracker's optical flow returning landmarks a hair apart on identical frames)
    for frame in after["frames"][2:]:
        assert np.abs(frame.astype(int) - after["frames"][1].astype(int)).max() <= 1
    assert set(times.seconds) == set(STAGES)
    assert times.frames == 12


def test_rotation_is_kept_and_faces_are_found_upright(tmp_path, noisy, portrait_frame):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    stored = np.ascontiguousarray(np.rot90(portrait_frame, -1))  # stored sideways; a 90-degree display matrix
    write_test_video(src, [stored] * 6, rotation=90)
    assert read_test_video(src)["rotations"] == {90}
    age_video(noisy, src, dst, 70, settings=VideoSettings(crf=0), progress=False)
    after = read_test_video(dst)
    assert after["rotations"] == {90}
    assert after["frames"][0].shape == stored.shape  # same stored size (240 wide, 320 high)
    changed = np.abs(after["frames"][1].astype(int) - read_test_video(src)["frames"][1].astype(int)).max(axis=2)
    assert changed.max() > 30  # the face was found (only possible upright) and aged (from frame 1: confirmed)


def test_frames_without_faces_pass_through(tmp_path, noisy):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    rng = np.random.default_rng(0)
    frames = [
        np.full((120, 160, 3), 60 + 10 * i, np.uint8) + rng.integers(0, 5, (120, 160, 3), dtype=np.uint8)
        for i in range(5)
    ]
    write_test_video(src, frames, audio=False)
    age_video(noisy, src, dst, 70, settings=VideoSettings(crf=0), progress=False)
    before, after = read_test_video(src)["frames"], read_test_video(dst)["frames"]
    assert len(after) == 5
    for a, b in zip(before, after, strict=True):
        # decoded RGB -> YUV 4:2:0 -> RGB again: lossless x264, so only colour conversion rounding (<= 3 levels)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_video_raises_and_leaves_nothing(tmp_path, noisy, portrait_frame, damage):
    good = tmp_path / "good.mp4"
    write_test_video(good, [portrait_frame] * 4)
    bad = tmp_path / "bad.mp4"
    data = good.read_bytes()
    bad.write_bytes(np.random.default_rng(0).bytes(5000) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"bad\.mp4"):
        age_video(noisy, bad, tmp_path / "out.mp4", 70, progress=False)
    assert _only_outputs(tmp_path, "") == ["bad.mp4", "good.mp4"]  # no output, no temporary file
