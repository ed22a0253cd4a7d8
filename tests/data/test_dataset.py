"""open_dataset: every data set kind on small files written here, with bad rows of each sort."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyagingrt.training.data.dataset import DatasetError, describe_groups, open_dataset
from pyagingrt.training.data.sources import ffhq_aging_keeps

S = 16


def _image(path: Path, value: int, size: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _check_item(data, i: int) -> dict:
    item = data[i]
    assert set(item) == {"image", "age", "gender", "index"}
    assert item["image"].shape == (3, S, S)
    assert item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0
    assert float(item["image"].max()) <= 1.0
    assert item["age"].dtype == torch.float32
    assert item["age"].dim() == 0
    assert item["gender"].dtype == torch.int64
    assert item["index"].dtype == torch.int64
    return item


def test_csv_kind_with_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _image(tmp_path / "a.png", 10)
    _image(tmp_path / "sub" / "b.jpg", 200)
    _image(tmp_path / "old.png", 30)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "labels.csv").write_text(
        "path,age,gender\n"
        "a.png,25,f\n"  # line 2
        "sub/b.jpg,61.5,male\n"  # line 3
        "missing.png,30,m\n"  # line 4: no file
        "broken.jpg,40,m\n"  # line 5: not an image
        "old.png,130,m\n"  # line 6: age out of range
        "a.png,abc,m\n"  # line 7: age not a number
        "a.png,33,x\n"  # line 8: gender unknown spelling
    )
    with caplog.at_level(logging.WARNING, logger="pyagingrt.data"):
        data = open_dataset(tmp_path, image_size=S)
    assert data.kind == "csv"
    assert len(data) == 2
    assert data.ages.tolist() == [25.0, 61.5]
    assert data.genders.tolist() == [0, 1]
    where = sorted(r.where for r in data.skipped)
    assert where == [f"labels.csv line {n}" for n in (4, 5, 6, 7, 8)]
    for n in (4, 5, 6, 7, 8):
        assert f"labels.csv line {n}" in caplog.text
    item = _check_item(data, 1)
    assert item["age"] == 61.5
    assert item["gender"] == 1
    assert item["index"] == 1
    assert abs(float(item["image"].mean()) - 200 / 255) < 0.02  # b.jpg, resized 20 -> 16


def test_csv_without_header_and_labels_elsewhere(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "x.png", 50)
    labels = tmp_path / "my_labels.csv"
    labels.write_text("x.png,7\n")
    data = open_dataset(tmp_path / "img", image_size=S, labels=labels)
    assert len(data) == 1
    assert data.genders.tolist() == [-1]
    assert data.ages.tolist() == [7.0]


def test_utkface_kind(tmp_path: Path) -> None:
    _image(tmp_path / "25_0_1_20170116174525125.jpg.chip.jpg", 10)  # male
    _image(tmp_path / "70_1_0_20170117012906285.jpg", 10)  # female
    _image(tmp_path / "39_1_20170116174525125.jpg.chip.jpg", 10)  # UTKFace's known bad name (no race)
    data = open_dataset(tmp_path, image_size=S)
    assert data.kind == "utkface"
    assert sorted(zip(data.ages.tolist(), data.genders.tolist(), strict=False)) == [(25.0, 1), (70.0, 0)]
    assert [r.where for r in data.skipped] == ["39_1_20170116174525125.jpg.chip.jpg"]
    _check_item(data, 0)


def test_morph_and_cacd_kinds(tmp_path: Path) -> None:
    morph = tmp_path / "morph"
    _image(morph / "001234_1M23.JPG", 10)
    _image(morph / "001235_0F58.JPG", 10)
    data = open_dataset(morph, image_size=S, kind="morph")
    assert sorted(zip(data.ages.tolist(), data.genders.tolist(), strict=False)) == [(23.0, 1), (58.0, 0)]
    cacd = tmp_path / "cacd"
    _image(cacd / "53_Robin_Williams_0001.jpg", 10)
    _image(cacd / "17_Emma_Watson_0004.jpg", 10)
    _image(cacd / "23_50_Cent_0002.jpg", 10)  # a name starting with digits
    _image(cacd / "notes.png", 10)
    data = open_dataset(cacd, image_size=S, min_age=16, max_age=62)
    assert data.kind == "cacd"
    assert sorted(data.ages.tolist()) == [17.0, 23.0, 53.0]
    assert data.genders.tolist() == [-1, -1, -1]
    assert [r.where for r in data.skipped] == ["notes.png"]


FFHQ_HEADER = (
    "image_number,age_group,age_group_confidence,gender,gender_confidence,head_pitch,head_roll,head_yaw,"
    "left_eye_occluded,right_eye_occluded,glasses\n"
)


def test_ffhq_aging_kind_and_filter(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "00000.png", 10)
    _image(tmp_path / "images" / "01000" / "01001.png", 10)  # the per-thousand folder layout
    for n in (2, 3, 4, 5, 6, 7):
        _image(tmp_path / "images" / f"{n:05d}.png", 10)
    labels = tmp_path / "ffhq_aging_labels.csv"
    labels.write_text(
        FFHQ_HEADER + "0,20-29,0.9,male,0.99,1,0,2,10,10,None\n"
        "1001,70-120,0.8,female,0.9,-5,0,10,80,20,Normal\n"
        "2,3-6,0.5,male,0.99,1,0,2,10,10,None\n"  # age confidence too low
        "3,3-6,0.9,male,0.99,31,0,2,10,10,None\n"  # head pitch
        "4,3-6,0.9,male,0.99,1,0,2,95,10,None\n"  # eye occluded
        "5,3-6,0.9,male,0.99,1,0,2,10,10,Dark\n"  # dark glasses
        "6,3-6,0.9,male,0.99,1,0,2,abc,10,None\n"  # malformed: a bad row, not a filtered one
        "9,3-6,0.9,male,0.99,1,0,2,10,10,None\n"  # no image file
    )
    data = open_dataset(tmp_path / "images", image_size=S, labels=labels, max_age=120)
    assert data.kind == "ffhq-aging"
    assert data.filtered == 4
    assert data.ages.tolist() == [24.5, 95.0]
    assert data.genders.tolist() == [1, 0]
    assert sorted(r.where for r in data.skipped) == ["ffhq_aging_labels.csv line 8", "ffhq_aging_labels.csv line 9"]


def test_ffhq_filter_rule() -> None:
    row = {
        "age_group_confidence": "0.61",
        "gender_confidence": "0.67",
        "head_pitch": "-29",
        "head_yaw": "39",
        "left_eye_occluded": "49",
        "right_eye_occluded": "89",
        "glasses": "Normal",
    }
    assert ffhq_aging_keeps(row) is None
    assert ffhq_aging_keeps({**row, "gender_confidence": "0.66"}) is not None
    assert ffhq_aging_keeps({**row, "head_yaw": "-40"}) is not None
    assert ffhq_aging_keeps({**row, "left_eye_occluded": "50"}) is not None


def test_unreadable_at_load_time_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, value in (("a.png", 10), ("b.png", 100), ("c.png", 200)):
        _image(tmp_path / name, value)
    (tmp_path / "labels.csv").write_text("a.png,20\nb.png,30\nc.png,40\n")
    data = open_dataset(tmp_path, image_size=S)
    raw = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(raw[: len(raw) // 3])  # truncated after the header check
    with caplog.at_level(logging.WARNING, logger="pyagingrt.data"):
        item = data[1]
    assert item["index"] == 2
    assert item["age"] == 40.0
    assert data.unreadable == {1}
    assert "labels.csv line 2" in caplog.text
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, S, S)
    assert batch["index"].tolist() == [0, 2, 2]
    for name in ("a.png", "c.png"):
        (tmp_path / name).unlink()
    with pytest.raises(DatasetError, match="cannot be read"):
        data[0]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope", image_size=S)
    _image(tmp_path / "photo.png", 1)
    with pytest.raises(DatasetError, match="cannot tell"):
        open_dataset(tmp_path, image_size=S)
    (tmp_path / "labels.csv").write_text("photo.png,5\n")
    with pytest.raises(DatasetError, match="no usable image"):
        open_dataset(tmp_path, image_size=S, min_age=10)
    with pytest.raises(DatasetError, match="unknown data set kind"):
        open_dataset(tmp_path, image_size=S, kind="imagenet")


def test_describe_groups() -> None:
    text = describe_groups(torch.tensor([5.0, 20.4, 20.5, 35.0, 80.0]), (21, 31, 41, 51))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:]}
    assert rows["0"][1:3] == ["0-20", "2"]  # 5 and 20.4
    assert rows["1"][1:3] == ["21-30", "1"]  # 20.5 rounds half up to 21
    assert rows["2"][1:3] == ["31-40", "1"]
    assert rows["3"][1:3] == ["41-50", "0"]
    assert "empty" in text
    assert rows["4"][1:3] == ["51+", "1"]
    assert rows["all"][1] == "5"
