"""``agingrt video`` as a user runs it, its errors, and one end-to-end run of a real model (AcGAN tiny)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import pyagingrt
from pyagingrt.cli.main import main
from tests.api.pipeline_adapters import read_test_video, register_test_models, save_test_checkpoint, write_test_video
from tests.api.test_cli_age import run_cli

cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_video")
    frame = np.full((240, 320, 3), 90, np.uint8)
    face = cv2.resize(skimage_data.astronaut()[0:320, 80:400], (240, 240), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(24):  # the face drifts right by 2 px a frame: the tracker has something to follow
        f = frame.copy()
        f[:, 2 * i : 2 * i + 240] = face[:, : 320 - 2 * i]
        frames.append(f)
    write_test_video(root / "clip.mp4", frames, fps=24)
    (root / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    save_test_checkpoint("noisy", root / "noisy.safetensors")
    return {p.stem: p for p in root.iterdir()}


def test_help_explains_every_flag_with_its_default():
    out = run_cli("video", "--help", test_models=False)
    assert out.returncode == 0
    for flag in (
        "--output",
        "--age",
        "--detect-every",
        "--batch-size",
        "--codec",
        "--crf",
        "--max-frames",
        "--no-progress",
        "--no-smooth",
        "--checkpoint",
        "--seed",
        "--face",
    ):
        assert flag in out.stdout, flag
    assert "(default: 5)" in out.stdout
    assert "(default: libx264; libvpx-vp9 for .webm)" in out.stdout


def test_video_keeps_frames_rate_and_audio_and_reports_stages(files, tmp_path):
    out = tmp_path / "old.mp4"
    result = run_cli(
        "video", str(files["clip"]), "-o", str(out), "--checkpoint", str(files["noisy"]), "--age", "70", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    before, after = read_test_video(files["clip"]), read_test_video(out)
    assert len(after["frames"]) == len(before["frames"]) == 24
    assert after["rate"] == before["rate"]
    assert after["audio_frames"] == before["audio_frames"] > 0
    for stage in ("decode", "detect", "align", "model", "paste-back", "encode"):
        assert f"{stage} " in result.stderr, stage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]  # no temporary file left


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("corrupt", "is not a video that can be read"),
        ("missing", "does not exist"),
        ("unwritable", "does not exist"),
        ("bad_suffix", "unknown video type '.gif'"),
        ("age_range", "takes ages 0 to 100"),
        ("samples", "one sample per face"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(files, tmp_path, capsys, monkeypatch, case, message):
    register_test_models(monkeypatch)
    src = {"corrupt": files["junk"], "missing": tmp_path / "nope.mp4"}.get(case, files["clip"])
    out = tmp_path / {"unwritable": "no_dir/out.mp4", "bad_suffix": "out.gif"}.get(case, "out.mp4")
    args = ["video", str(src), "-o", str(out), "--checkpoint", str(files["noisy"]), "--no-progress"]
    args += ["--age", "150" if case == "age_range" else "70"] + (["--samples", "3"] if case == "samples" else [])
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("agingrt: error: "), err
    assert "\n" not in err, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_acgan_tiny_end_to_end(files, tmp_path):
    """A real model, through `python -m pyagingrt` exactly as a user runs it: a saved AcGAN tiny checkpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load("acgan", config="tiny", device="cpu")
    checkpoint = engine.save(tmp_path / "acgan_tiny.safetensors")
    out = tmp_path / "old.mp4"
    result = run_cli(
        "video",
        str(files["clip"]),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--age",
        "60",
        "--max-frames",
        "6",
        "--no-progress",
        test_models=False,
    )
    assert result.returncode == 0, result.stderr
    after = read_test_video(out)
    assert len(after["frames"]) == 6  # --max-frames
    assert after["frames"][0].shape == (240, 320, 3)
