"""``agingrt age``: run as a user runs it (subprocess) and, for the error matrix, through main() in-process."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyagingrt.cli.main import main
from tests.api.pipeline_adapters import register_test_models, save_test_checkpoint

skimage_data = pytest.importorskip("skimage.data")
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, test_models: bool = True) -> subprocess.CompletedProcess:
    """``python -m pyagingrt ARGS`` (or its twin with the test-only models registered) in a fresh process."""
    module = "tests.api.cli_with_test_models" if test_models else "pyagingrt"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_age")
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(root / "wall.png")
    (root / "notes.txt").write_text("not an image")
    save_test_checkpoint("identity", root / "identity.safetensors")
    save_test_checkpoint("noisy", root / "noisy.safetensors")
    return {p.stem: p for p in root.iterdir()}


@pytest.fixture
def in_process(monkeypatch):
    register_test_models(monkeypatch)


def _one_line_error(capsys, pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("agingrt: error: "), err
    assert "\n" not in err, err
    assert "Traceback" not in err, err
    assert pattern in err, err


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))  # temporary files are hidden


# --- as a user runs it ----------------------------------------------------------------------------------
def test_help_explains_every_flag_with_its_default():
    out = run_cli("age", "--help", test_models=False)
    assert out.returncode == 0
    for flag in (
        "--age",
        "--ages",
        "--sheet",
        "--out-dir",
        "--checkpoint",
        "--model",
        "--sigma-m",
        "--sigma-g",
        "--text",
        "--reference",
        "--samples",
        "--seed",
        "--device",
        "--precision",
        "--config",
        "--face",
        "--max-pixels",
    ):
        assert flag in out.stdout, flag
    for default in ("(default: 0)", "(default: fp32)", "(default: all)", "(default: 200000000"):
        assert default in out.stdout, default


def test_ages_a_photo_and_leaves_the_rest_untouched(files, tmp_path):
    out = tmp_path / "aged.png"
    result = run_cli("age", str(files["astronaut"]), "--checkpoint", str(files["noisy"]), "--age", "70", "-o", str(out))
    assert result.returncode == 0, result.stderr
    aged, photo = _read(out), _read(files["astronaut"])
    diff = np.abs(aged.astype(int) - photo.astype(int)).max(axis=2)
    assert diff.max() > 30  # the face got the test model's noise
    assert (diff[300:] == 0).all()  # far from the face (top middle): untouched, bit for bit
    assert (diff[:, 400:] == 0).all()
    assert _leftovers(tmp_path) == []


def test_no_face_is_one_line_and_exit_1(files, tmp_path):
    out = tmp_path / "out.png"
    result = run_cli("age", str(files["wall"]), "--checkpoint", str(files["identity"]), "--age", "70", "-o", str(out))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("agingrt: error: no face found")
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


# --- the error matrix, in-process ------------------------------------------------------------------------
def _huge_png(path: Path, side: int = 30000) -> None:
    """A tiny file whose header claims side x side pixels (no need to hold them to test the refusal)."""
    raw = bytearray((path.parent / "seed.png").read_bytes() if (path.parent / "seed.png").exists() else b"")
    if not raw:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path.parent / "seed.png")
        raw = bytearray((path.parent / "seed.png").read_bytes())
    ihdr = bytes(raw[12:16]) + struct.pack(">II", side, side) + bytes(raw[24:29])
    raw[16:24] = ihdr[4:12]
    raw[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(raw))


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("not_an_image", "is not an image"),
        ("enormous", "too large"),
        ("unwritable", "does not exist"),
        ("unknown_model", "unknown model 'stylegan9'"),
        ("other_model", "is a identity checkpoint, not noisy"),
        ("age_range", "takes ages 0 to 100"),
        ("two_photos_one_output", "-o names one output"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(files, tmp_path, capsys, case, message):
    huge = tmp_path / "huge.png"
    _huge_png(huge)
    photo = {"missing": tmp_path / "nope.jpg", "not_an_image": files["notes"], "enormous": huge}.get(
        case, files["astronaut"]
    )
    out = tmp_path / ("no_such_dir/out.png" if case == "unwritable" else "out.png")
    args = ["age", str(photo), "--checkpoint", str(files["identity"]), "--age", "150" if case == "age_range" else "70"]
    args += ["--model", {"unknown_model": "stylegan9", "other_model": "noisy"}.get(case, "identity")]
    if case == "two_photos_one_output":
        args.insert(2, str(files["astronaut"]))
    assert main([*args, "-o", str(out)]) == 1
    _one_line_error(capsys, message)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.usefixtures("in_process")
def test_photo_over_max_pixels_is_refused_by_the_tools_own_limit(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    args = ["age", str(files["astronaut"]), "--checkpoint", str(files["identity"]), "--age", "70", "-o", str(out)]
    assert main([*args, "--max-pixels", "100000"]) == 1
    _one_line_error(capsys, "is 512x512 (0.262 MP), too large: above --max-pixels 100000")
    assert not out.exists()


@pytest.mark.usefixtures("in_process")
def test_photo_over_pillows_limit_is_aged_at_full_size_without_its_warning(files, tmp_path, monkeypatch):
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that (89 / 179 MP by default); lowered here
    so a 512x512 photo is over both. The tool's own --max-pixels (default 200 MP) is the only limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    out = tmp_path / "out.png"
    args = ["age", str(files["astronaut"]), "--checkpoint", str(files["noisy"]), "--age", "70", "-o", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the run
        assert main(args) == 0
    assert Image.MAX_IMAGE_PIXELS == 100_000  # put back
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # for this test's own reads
    aged, photo = _read(out), _read(files["astronaut"])
    assert aged.shape == photo.shape == (512, 512, 3)
    assert np.abs(aged.astype(int) - photo.astype(int)).max() > 30  # the face was aged, at full size


@pytest.mark.usefixtures("in_process")
def test_large_photo_keeps_its_size(files, tmp_path):
    """Faces are found on a copy of at most 1024 px a side; the output has the input's 2048x2048 pixels."""
    big = tmp_path / "big.png"
    Image.fromarray(skimage_data.astronaut()).resize((2048, 2048), Image.Resampling.BICUBIC).save(big)
    out = tmp_path / "out.png"
    assert main(["age", str(big), "--checkpoint", str(files["noisy"]), "--age", "70", "-o", str(out)]) == 0
    aged, photo = _read(out), _read(big)
    assert aged.shape == photo.shape == (2048, 2048, 3)
    diff = np.abs(aged.astype(int) - photo.astype(int)).max(axis=2)
    assert diff.max() > 30
    assert (diff[1400:] == 0).all()  # far from the face: untouched


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_kept(files, tmp_path, mode):
    photo = skimage_data.astronaut()
    alpha = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))  # a left-to-right ramp [512, 512]
    src = tmp_path / "clear.png"
    if mode == "RGBA":
        Image.fromarray(np.dstack([photo, alpha])).save(src)
    elif mode == "LA":
        Image.fromarray(np.dstack([photo.mean(axis=2).astype(np.uint8), alpha]), "LA").save(src)
    else:  # a palette image with one transparent colour
        Image.fromarray(photo).quantize(64).save(src, transparency=0)
    with Image.open(src) as im:
        expected = np.asarray(im.convert("RGBA"))[..., 3]
    out = tmp_path / "out.png"
    assert main(["age", str(src), "--checkpoint", str(files["noisy"]), "--age", "70", "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        kept = np.asarray(im)
    assert (kept[..., 3] == expected).all()


@pytest.mark.usefixtures("in_process")
def test_transparency_dropped_by_jpeg_is_said(files, tmp_path, capsys):
    src = tmp_path / "clear.png"
    Image.fromarray(np.dstack([skimage_data.astronaut(), np.full((512, 512), 128, np.uint8)])).save(src)
    out = tmp_path / "out.jpg"
    assert main(["age", str(src), "--checkpoint", str(files["identity"]), "--age", "70", "-o", str(out)]) == 0
    assert "has transparency, which .jpg cannot keep" in capsys.readouterr().err


@pytest.mark.usefixtures("in_process")
def test_progression_sheet_and_one_file_per_age(files, tmp_path):
    sheet = tmp_path / "sheet.png"
    code = main(
        [
            "age",
            str(files["astronaut"]),
            "--checkpoint",
            str(files["identity"]),
            "--ages",
            "10,40,70",
            "--out-dir",
            str(tmp_path),
            "--sheet",
            str(sheet),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("astronaut_age*.png")) == [
        "astronaut_age10.png",
        "astronaut_age40.png",
        "astronaut_age70.png",
    ]
    height, width, _ = _read(sheet).shape
    assert width == 4 * 320  # input + 3 ages, 320 px tiles
    assert height > 320  # and a label band below


@pytest.mark.usefixtures("in_process")
def test_sheet_alone_writes_only_the_sheet(files, tmp_path):
    photo = tmp_path / "me.png"
    photo.write_bytes(files["astronaut"].read_bytes())
    (tmp_path / "me_age40.png").write_bytes(b"an earlier result")
    sheet = tmp_path / "sheet.png"
    args = ["age", str(photo), "--checkpoint", str(files["identity"]), "--ages", "10,40", "--sheet", str(sheet)]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.png", "me_age40.png", "sheet.png"]
    assert (tmp_path / "me_age40.png").read_bytes() == b"an earlier result"  # not overwritten


@pytest.mark.usefixtures("in_process")
def test_sheet_needs_ages_and_one_photo(files, tmp_path, capsys):
    code = main(
        [
            "age",
            str(files["astronaut"]),
            "--checkpoint",
            str(files["identity"]),
            "--age",
            "70",
            "--sheet",
            str(tmp_path / "s.png"),
        ]
    )
    assert code == 1
    _one_line_error(capsys, "--sheet needs exactly one photo and --ages")
